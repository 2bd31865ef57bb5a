"""What `relay check` tells about the routes beyond their validity: routes that can never
match (an earlier route without ``continue`` catches every event they would), and which
sample callbacks each route catches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.routing.model import Route


@dataclass(frozen=True)
class Shadow:
    """Route ``index`` never matches: route ``by`` comes first, catches all it would, and
    does not continue."""

    index: int
    by: int


def shadowed(routes: Sequence[Route]) -> list[Shadow]:
    """Routes no event can reach. Sound, not complete: a route is reported when an earlier
    route that does not continue has no matcher it lacks (so matches whatever it matches);
    overlaps that need reasoning about regexes are not looked for."""
    found = []
    for index, later in enumerate(routes):
        wanted = set(later.match)
        for earlier_index, earlier in enumerate(routes[:index]):
            if not earlier.continue_ and set(earlier.match) <= wanted:
                found.append(Shadow(index, earlier_index))
                break
    return found


def matching_routes(routes: Sequence[Route], labels: dict[str, tuple[str, ...]]) -> list[int]:
    """The routes an event with ``labels`` matches, walking them as the router does (the
    first match ends the walk unless it continues), whatever destinations they share."""
    found = []
    for index, candidate in enumerate(routes):
        if all(matcher.matches(labels) for matcher in candidate.match):
            found.append(index)
            if not candidate.continue_:
                break
    return found
