"""Decide where an event goes by walking the routes in order (README: Rules).

Runs on every request, so it only reads the already-validated rules and compiled matchers.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.events import TaskEvent
from relay.routing.model import Rules


@dataclass(frozen=True, slots=True)
class Target:
    """Deliver to ``destination`` because of route number ``route`` (index in the merged list)."""

    route: int
    destination: str


def route(rules: Rules, event: TaskEvent) -> list[Target]:
    """The destinations for ``event``, in route order, each at most once.

    A route matches when all its matchers hold (no matchers: every event). The first matching
    route ends the walk unless it says ``continue: true``. A destination reached by several
    routes keeps the first route's index, so one event is never sent twice to one place.
    """
    labels: dict[str, tuple[str, ...]] | None = None  # built once, by the first matcher
    targets: list[Target] = []
    taken: set[str] = set()
    for index, candidate in enumerate(rules.routes):
        if candidate.match:
            if labels is None:
                labels = event.match_labels()
            if not all(matcher.matches(labels) for matcher in candidate.match):
                continue
        for destination in candidate.to:
            if destination not in taken:
                taken.add(destination)
                targets.append(Target(route=index, destination=destination))
        if not candidate.continue_:
            break
    return targets
