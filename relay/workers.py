"""``relay serve``'s delivery worker processes beside the receiver (one by default, or as many
as ``--workers N`` says; README: Storage and deployment, worker processes).

The serving process then only receives; the ``relay worker`` processes on the same database
deliver, each on its own event loop (and core), so sending never competes with answering
providers, and a destination that is down costs the receiver nothing. A worker that exits
unasked is started again (after a second, doubling up to a minute while it keeps failing);
stopping the server stops them, each given the shutdown grace to finish its sends.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("relay.workers")

# A worker that dies at once waits this long before the next start, doubled each time in a row.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
# A worker that ran this long before it exited is not "failing in a row".
STEADY_SECONDS = 30.0


class WorkerPool:
    """Starts and watches ``count`` worker processes running ``command`` with ``env``."""

    def __init__(
        self,
        count: int,
        command: list[str],
        env: Mapping[str, str],
        grace: float,
        slot_env: Callable[[int], Mapping[str, str]] | None = None,
    ) -> None:
        """``slot_env``: variables of one worker's own (by its slot, from 0), on top of ``env``."""
        self._count = count
        self._command = command
        self._env = dict(env)
        self._slot_env = slot_env
        self._grace = grace
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def start(self) -> None:
        for slot in range(self._count):
            self._spawn(slot)
        self._watcher = threading.Thread(target=self._watch, name="relay-workers", daemon=True)
        self._watcher.start()

    def _spawn(self, slot: int) -> None:
        # Workers' output goes where ours does (stderr): one log, one format.
        env = self._env if self._slot_env is None else {**self._env, **self._slot_env(slot)}
        proc = subprocess.Popen(self._command, env=env, stdin=subprocess.DEVNULL)
        with self._lock:
            self._procs[slot] = proc
        log.info("worker %d started (pid %d)", slot + 1, proc.pid)

    def _watch(self) -> None:
        backoff = [FIRST_BACKOFF] * self._count
        started = [time.monotonic()] * self._count
        while not self._stopping.wait(0.2):
            for slot in range(self._count):
                with self._lock:
                    proc = self._procs[slot]
                if proc is None or proc.poll() is None:
                    continue
                ran = time.monotonic() - started[slot]
                if ran >= STEADY_SECONDS:
                    backoff[slot] = FIRST_BACKOFF
                log.error(
                    "worker %d (pid %d) exited with %s after %.1f s: starting it again in %g s",
                    slot + 1,
                    proc.pid,
                    _exit_text(proc.returncode),
                    ran,
                    backoff[slot],
                )
                if self._stopping.wait(backoff[slot]):
                    return
                backoff[slot] = min(MAX_BACKOFF, backoff[slot] * 2)
                started[slot] = time.monotonic()
                self._spawn(slot)

    def stop(self) -> None:
        """SIGTERM every worker; SIGKILL those still running after the grace (and 5 s)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            procs = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + 5.0
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within the grace: killed", proc.pid)
                proc.kill()
                proc.wait()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def worker_command(settings_env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one worker: this Python, ``-m relay worker``, with the
    serving process's environment and the settings it resolved (command-line options too)."""
    env = {**os.environ, **settings_env}
    return [sys.executable, "-m", "relay", "worker"], env
