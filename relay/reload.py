"""Reload the rules when a file under the rules folder changes (a background service).

Changes come from the platform's file notifications (inotify on Linux) through watchfiles;
``WATCHFILES_FORCE_POLLING=1`` polls instead where notifications do not reach the process (some
network and bind mounts). Each burst of changes (an editor's save is several events; a
Kubernetes ConfigMap update is a directory swap) is one reload, and files left byte-identical
to the rules in force are not reloaded at all. A failed reload keeps the last good rules: the
RuleBook logs every problem and counts it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import watchfiles

from relay.rulebook import RuleBook

log = logging.getLogger("relay.rules")

# A burst ends after this long without a new change (ms): an editor's write, rename and chmod
# are a few ms apart; a copy of several files is seldom slower.
QUIET_MS = 200
# ... but a burst that never pauses still reloads this often (ms).
MAX_BURST_MS = 2_000


class RulesWatcher:
    """Watches ``rulebook.directory`` until ``stop`` is set; reloads after each burst.
    ``run`` is a ``relay.runtime.Service``'s loop."""

    def __init__(
        self, rulebook: RuleBook, *, quiet_ms: int = QUIET_MS, max_burst_ms: int = MAX_BURST_MS
    ) -> None:
        self._rulebook = rulebook
        self._quiet_ms = quiet_ms
        self._max_burst_ms = max_burst_ms

    async def run(self, stop: asyncio.Event) -> None:
        directory: Path = self._rulebook.directory
        log.info("reloading the rules on any change under %s", directory)
        try:
            # Hidden names are watched too (the loader skips them): a ConfigMap update is a
            # rename of "..data". The default filter drops editors' swap and backup files.
            async for changes in watchfiles.awatch(
                directory,
                stop_event=stop,
                step=self._quiet_ms,
                debounce=self._max_burst_ms,
                recursive=True,
            ):
                names = sorted({Path(path).name for _, path in changes})
                log.info("rules folder changed (%s): reloading", ", ".join(names))
                self._rulebook.reload(if_changed=True)
        except (OSError, RuntimeError) as exc:
            # No inotify watch left, the folder gone...: the process keeps its rules and runs
            # on; SIGHUP and POST /admin/reload still reload.
            log.error(
                "stopped watching %s for rules changes (%s); reload with SIGHUP instead",
                directory,
                exc,
            )
