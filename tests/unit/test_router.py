from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from relay.events import Output, TaskEvent
from relay.routing.model import Route, Rules, WebhookDestination
from relay.routing.router import Target, route


def event(**overrides: Any) -> TaskEvent:
    fields: dict[str, Any] = {
        "id": "evt_1",
        "source": "goapi",
        "provider": "goapi",
        "task_id": "task_1",
        "dedupe_key": "goapi:task_1:succeeded",
        "status": "succeeded",
        "provider_status": "completed",
        "final": True,
        "model": "kling",
        "received_at": datetime.now(UTC),
    }
    fields.update(overrides)
    return TaskEvent(**fields)


def rules(*routes: dict[str, Any]) -> Rules:
    names = {name for r in routes for name in ([r["to"]] if isinstance(r["to"], str) else r["to"])}
    return Rules(
        destinations={
            name: WebhookDestination(type="webhook", url=f"http://{name}") for name in names
        },
        routes=[Route.model_validate(r) for r in routes],
    )


def destinations(targets: list[Target]) -> list[str]:
    return [t.destination for t in targets]


def test_first_matching_route_wins() -> None:
    table = rules(
        {"match": ['status="failed"'], "to": ["oncall"]},
        {"match": ['status="succeeded"'], "to": ["billing"]},
        {"match": ['model="kling"'], "to": ["kling-team"]},
        {"to": ["catch-all"]},
    )
    assert route(table, event()) == [Target(route=1, destination="billing")]
    assert route(table, event(status="failed")) == [Target(route=0, destination="oncall")]
    assert route(table, event(status="pending", final=False)) == [Target(2, "kling-team")]
    assert route(table, event(status="pending", model="luma")) == [Target(3, "catch-all")]


def test_all_matchers_of_a_route_must_hold() -> None:
    table = rules({"match": ['status="succeeded"', 'model=~"kling|luma"'], "to": "gen"})
    assert destinations(route(table, event(model="luma"))) == ["gen"]
    assert route(table, event(model="flux")) == []
    assert route(table, event(status="failed", model="luma")) == []


def test_continue_goes_on_to_later_routes() -> None:
    table = rules(
        {"match": ['status="failed"'], "to": ["oncall"], "continue": True},
        {"match": ['error_code="quota"'], "to": ["billing"]},
        {"to": ["archive"]},
    )
    failed = event(status="failed", error={"code": "quota", "message": "out of credits"})
    assert route(table, failed) == [Target(0, "oncall"), Target(1, "billing")]
    other = event(status="failed", error={"code": "nsfw", "message": "refused"})
    assert route(table, other) == [Target(0, "oncall"), Target(2, "archive")]
    assert route(table, event()) == [Target(2, "archive")]


def test_no_matching_route_means_no_targets() -> None:
    table = rules({"match": ['status="failed"'], "to": ["oncall"]})
    assert route(table, event()) == []
    assert route(Rules(), event()) == []


def test_empty_to_drops_matching_events() -> None:
    table = rules({"match": ['test="true"'], "to": []}, {"to": ["billing"]})
    assert route(table, event(test=True)) == []
    assert destinations(route(table, event())) == ["billing"]


def test_a_destination_gets_one_target_from_the_first_route() -> None:
    table = rules(
        {"match": ['status="failed"'], "to": ["oncall", "gen", "oncall"], "continue": True},
        {"match": ['final="true"'], "to": ["billing", "gen"], "continue": True},
        {"to": ["oncall", "archive"]},
    )
    assert route(table, event(status="failed")) == [
        Target(0, "oncall"),
        Target(0, "gen"),
        Target(1, "billing"),
        Target(2, "archive"),
    ]


def test_matching_on_multi_valued_output_kind() -> None:
    table = rules(
        {"match": ['output_kind="video"'], "to": ["video-team"]},
        {"match": ['output_kind!~"image|video"'], "to": ["no-media"]},
    )
    both = event(
        outputs=[Output(kind="image", url="http://i"), Output(kind="video", url="http://v")]
    )
    image = event(outputs=[Output(kind="image", url="http://i")])
    assert destinations(route(table, both)) == ["video-team"]
    assert route(table, image) == []
    # No outputs: output_kind is "", so the negative matcher holds.
    assert destinations(route(table, event())) == ["no-media"]
