"""Store contract: ``find_events`` by labels from the hook URL (every backend), each label an
exact match, all of them required, together with the other filters."""

from __future__ import annotations

import pytest

from relay.store.base import EventFilter, Store
from tests.store.conftest import T0
from tests.store.test_contract import make_event


async def test_find_events_by_labels(store: Store) -> None:
    events = [
        make_event("a", labels={"team": "media", "batch": "b1"}),
        make_event("b", at=T0 + 1, labels={"team": "media", "batch": "b2"}),
        make_event("c", at=T0 + 2, labels={"team": "sound"}),
        make_event("d", at=T0 + 3),
    ]
    for event in events:
        assert not (await store.ingest(event, [])).duplicate

    async def ids(*labels: tuple[str, str], **other: object) -> list[str]:
        where = EventFilter(labels=labels, **other)  # type: ignore[arg-type]
        return [e.id for e in await store.find_events(where, limit=10)]

    assert await ids(("team", "media")) == ["ev-goapi-main-b", "ev-goapi-main-a"]
    assert await ids(("team", "media"), ("batch", "b1")) == ["ev-goapi-main-a"]
    assert await ids(("team", "sound"), ("batch", "b1")) == []
    assert await ids(("team", "medi")) == []  # exact, not a prefix
    assert await ids(("team", "media"), since=T0 + 1) == ["ev-goapi-main-b"]
    # Labels ride with the stored event.
    [found] = await store.find_events(EventFilter(labels=(("team", "sound"),)), limit=1)
    assert found.labels == {"team": "sound"}


def test_a_label_name_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bad label name"):
        EventFilter(labels=(("team') = 'x' OR 1=1 --", "x"),))
