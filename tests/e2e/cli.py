"""Running the command line for real: ``python -m relay ...`` as a subprocess, and
``relay serve`` as a server process. Every run has a timeout."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
GOAPI_SECRET = "s3cr3t-relay-goapi"  # what the GoAPI fixtures send (and carry in their body)
DOWN_SECRET = "whsec_" + base64.b64encode(b"cli-downstream-secret-01").decode()
RUN_TIMEOUT = 30.0


def base_env(**extra: str) -> dict[str, str]:
    """An almost empty environment: no RELAY_* and no rule variables unless given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def relay(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=env if env is not None else base_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def arelay(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """``relay`` without blocking the event loop (a test server may be running in it)."""
    return await asyncio.to_thread(relay, cwd, *args, env=env)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Serve:
    """``relay serve`` as a subprocess; its output goes to a log file for failure messages.
    ``args`` are added to its command line."""

    ready_path = "/readyz"

    def __init__(self, cwd: Path, env: dict[str, str], name: str, *args: str) -> None:
        self.cwd, self.env, self.args = cwd, env, args
        self.port = free_port()
        self.log = cwd / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def command(self) -> list[str]:
        return ["serve", "--rules", "rules", "--port", str(self.port), *self.args]

    async def start(self) -> Serve:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                *self.command(),
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            await self._ready(self.proc, within=15)
        except BaseException:
            await self.stop()  # never leave a server behind
            raise
        return self

    async def _ready(self, proc: asyncio.subprocess.Process, within: float) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.url, timeout=1.0) as client:
            while True:
                what = f"relay {self.command()[0]}"
                if proc.returncode is not None:
                    raise AssertionError(f"{what} exited early:\n{self.output()}")
                try:
                    if (await client.get(self.ready_path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} did not become ready:\n{self.output()}")
                await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        """SIGTERM, then wait (bounded); kill if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(
                    f"relay {self.command()[0]} ignored SIGTERM:\n{self.output()}"
                ) from None
        return proc.returncode


class Worker(Serve):
    """``relay worker --metrics-port`` as a subprocess: ``url`` is its metrics server, ready
    once that answers /healthz."""

    ready_path = "/healthz"

    def command(self) -> list[str]:
        return ["worker", "--rules", "rules", "--metrics-port", str(self.port), *self.args]
