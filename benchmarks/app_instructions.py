"""Instructions per callback for relay's ASGI app, counted by valgrind (deterministic).

    python benchmarks/app_instructions.py [--app relay|bare] [--small 200] [--large 600]

app_cost.py measures CPU time, which drifts with the shared machine's speed; small changes
to the request path are easier to judge by instruction counts. This runs the same in-process
drive as app_cost.py under ``valgrind --tool=callgrind`` twice, with ``--small`` and
``--large`` callbacks (the bodies for both are built either way), and reports the difference
per callback: start-up and the fixed costs cancel out. relay's SQLite thread is included.
Slow (valgrind runs Python about 50x slower): keep the counts small.

    python benchmarks/app_instructions.py --drive N   # one run, as valgrind calls it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from app_cost import RULES, bodies, drive, started  # noqa: E402
from bare_app import app as bare_app  # noqa: E402

from relay.app import create_app  # noqa: E402
from relay.settings import Settings  # noqa: E402


async def run(which: str, requests: int, built: int) -> None:
    logging.basicConfig(level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.yaml").write_text(RULES)
        if which == "bare":
            app, stop = bare_app, None
        else:
            app = create_app(Settings(rules=rules, db=f"sqlite:///{tmp}/relay.db", dispatch=False))
            stop = await started(app)
        try:
            payloads = bodies(built, "cg")
            # A few first, so lazy imports and first-call set-up are out of the difference.
            statuses = await drive(app, payloads[:20])
            statuses += await drive(app, payloads[20 : 20 + requests])
        finally:
            if stop is not None:
                await stop()
    if set(statuses) != {200}:
        raise SystemExit(f"unexpected answers {sorted(set(statuses))}")


def instructions(which: str, requests: int, built: int, out: Path) -> tuple[int, int]:
    """(event loop thread, other threads) instructions of one run."""
    for stale in out.parent.glob(f"{out.name}-*"):
        stale.unlink()
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--app",
            which,
            "--drive",
            str(requests),
            "--built",
            str(built),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    counts = []
    for part in sorted(out.parent.glob(f"{out.name}-*")):
        match = re.search(r"^summary:\s*(\d+)", part.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"no summary in {part}")
        counts.append(int(match.group(1)))
    if not counts:
        raise SystemExit(f"no callgrind output at {out}-*")
    # Thread 1 runs the event loop; the others are the SQLite worker (and any helper).
    return counts[0], sum(counts[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=600)
    ap.add_argument("--app", choices=("relay", "bare"), default="relay")
    ap.add_argument("--keep", type=Path, help="directory to keep the callgrind files in")
    ap.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--built", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive is not None:
        asyncio.run(run(args.app, args.drive, args.built or args.drive + 20))
        return
    built = args.large + 20
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        name = f"callgrind.{args.app}"
        small = instructions(args.app, args.small, built, where / f"{name}.{args.small}")
        large = instructions(args.app, args.large, built, where / f"{name}.{args.large}")
    n = args.large - args.small
    loop, others = (large[0] - small[0]) / n, (large[1] - small[1]) / n
    print(
        f"{args.app}: {loop + others:,.0f} instructions per callback ({loop:,.0f} on the event "
        f"loop thread, {others:,.0f} on the others; {args.small} vs {args.large} callbacks)"
    )


if __name__ == "__main__":
    main()
