"""Which routes can never match, and which routes an event's labels reach (relay check)."""

from __future__ import annotations

from relay.routing.coverage import Shadow, matching_routes, shadowed
from relay.routing.model import Route


def routes(*specs: tuple[list[str], bool]) -> list[Route]:
    return [Route.model_validate({"match": m, "to": ["d"], "continue": c}) for m, c in specs]


def test_a_route_after_one_that_catches_all_it_would_is_reported() -> None:
    found = shadowed(
        routes(
            (['status="failed"'], False),
            (['status="failed"', 'model="mj"'], False),  # narrower than #0: never reached
            (['status="succeeded"'], True),
            (['status="succeeded"', 'model="mj"'], False),  # #2 continues: reachable
            ([], False),  # catch-all
            (['final="true"'], False),  # after the catch-all: never reached
        )
    )
    assert found == [Shadow(1, 0), Shadow(5, 4)]


def test_overlaps_it_cannot_prove_are_not_reported() -> None:
    # status=~"fail.*" catches all of status="failed", but that takes regex reasoning: the
    # check is sound (every report is true), not complete.
    assert shadowed(routes((['status=~"fail.*"'], False), (['status="failed"'], False))) == []
    assert shadowed(routes((['status="failed"'], False), (['status="succeeded"'], False))) == []


def test_matching_routes_walks_like_the_router() -> None:
    table = routes((['status="failed"'], True), (['model="mj"'], False), ([], False))
    labels = {"status": ("failed",), "model": ("mj",)}
    assert matching_routes(table, labels) == [0, 1]
    assert matching_routes(table, {"status": ("succeeded",), "model": ("x",)}) == [2]
