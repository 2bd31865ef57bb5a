"""The admin API under /admin: one table of endpoints gives both the routes and the OpenAPI
document (``relay.admin.openapi``), so neither can list what the other lacks.

Every answer is JSON; every refusal is ``{"error": "...", "problems": [...]}`` with a 4xx.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.admin import operations as ops
from relay.admin import schemas as s
from relay.admin import silences
from relay.admin.params import is_id, parse_labels, parse_moment
from relay.errors import StoreUnavailableError
from relay.ids import IdFactory
from relay.runtime import Runtime
from relay.store.base import DeliveryFilter, EventFilter

Handler = Callable[[Request, Runtime], Awaitable[Response]]

log = logging.getLogger("relay.admin")


class Refused(Exception):
    """A request we answer with a 4xx and a reason."""

    def __init__(self, status: int, error: str, problems: list[str] | None = None) -> None:
        self.status = status
        self.error = error
        self.problems = problems
        super().__init__(error)


@dataclass(frozen=True)
class Endpoint:
    """One operation: its route, what it reads and what it answers (for the document)."""

    method: str
    path: str
    handler: Handler
    summary: str
    answers: dict[int, type[BaseModel]]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    params: dict[str, str] = field(default_factory=dict)
    description: str = ""


def _json(model: BaseModel, status: int = 200) -> Response:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _parse(model: type[Any], data: object, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()
        ]
        raise Refused(400, f"bad {what}", problems) from None


async def _body(request: Request, model: type[Any]) -> Any:
    raw = await request.body()
    if not raw.strip():
        return _parse(model, {}, "body")
    try:
        data = json.loads(raw)
    except ValueError:
        raise Refused(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object")
    return _parse(model, data, "body")


def _query(request: Request, model: type[Any]) -> Any:
    return _parse(model, dict(request.query_params), "query")


def _moment(text: str | None, now: float, name: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_moment(text, now)
    except ValueError as exc:
        raise Refused(400, f"bad {name}", [f"{name}: {exc}"]) from None


def _id(request: Request, name: str, what: str) -> str:
    value: str = request.path_params[name]
    if not is_id(value):
        raise Refused(404, f"no {what} {value!r}")
    return value


# --- handlers -------------------------------------------------------------------------------


async def list_events(request: Request, rt: Runtime) -> Response:
    q: s.EventQuery = _query(request, s.EventQuery)
    now = rt.clock()
    try:
        # Every `label` given (the model saw the last one: each is checked here).
        labels = parse_labels(request.query_params.getlist("label"))
    except ValueError as exc:
        raise Refused(400, "bad label", [f"label: {exc}"]) from None
    where = EventFilter(
        source=q.source,
        provider=q.provider,
        status=q.status,
        task_id=q.task_id,
        model=q.model,
        since=_moment(q.since, now, "since"),
        until=_moment(q.until, now, "until"),
        labels=labels,
    )
    page = await _paged(ops.events_page(rt.store, where, q.limit, q.cursor))
    events = [e.model_copy(update={"raw": None}) for e in page.items]
    return _json(s.EventPage(events=events, next_cursor=page.next_cursor))


async def _paged(fetch: Awaitable[ops.Page[Any]]) -> ops.Page[Any]:
    try:
        return await fetch
    except ValueError as exc:  # a cursor we did not make
        raise Refused(400, str(exc)) from None


async def get_event(request: Request, rt: Runtime) -> Response:
    event_id = _id(request, "event_id", "event")
    detail = await ops.event_detail(rt.store, event_id)
    if detail is None:
        raise Refused(404, f"no event {event_id}")
    deliveries = [s.Delivery.of(d.delivery, d.attempts) for d in detail.deliveries]
    return _json(s.EventDetail(event=detail.event, deliveries=deliveries))


async def reroute_event(request: Request, rt: Runtime) -> Response:
    event_id = _id(request, "event_id", "event")
    result = await ops.reroute(rt, event_id)
    if result is None:
        raise Refused(404, f"no event {event_id}")
    created = [s.Delivery.of(d) for d in result.created]
    return _json(s.Rerouted(event_id=event_id, created=created, unchanged=result.unchanged))


async def list_deliveries(request: Request, rt: Runtime) -> Response:
    q: s.DeliveryQuery = _query(request, s.DeliveryQuery)
    now = rt.clock()
    where = DeliveryFilter(
        state=q.state,
        destination=q.destination,
        event_id=q.event_id,
        since=_moment(q.since, now, "since"),
        until=_moment(q.until, now, "until"),
    )
    page = await _paged(ops.deliveries_page(rt.store, where, q.limit, q.cursor))
    deliveries = [s.Delivery.of(d) for d in page.items]
    return _json(s.DeliveryPage(deliveries=deliveries, next_cursor=page.next_cursor))


async def get_delivery(request: Request, rt: Runtime) -> Response:
    delivery_id = _id(request, "delivery_id", "delivery")
    found = await ops.delivery_detail(rt.store, delivery_id)
    if found is None:
        raise Refused(404, f"no delivery {delivery_id}")
    return _json(s.Delivery.of(found.delivery, found.attempts))


async def replay_delivery(request: Request, rt: Runtime) -> Response:
    delivery_id = _id(request, "delivery_id", "delivery")
    answer = await ops.replay_one(rt.store, delivery_id, rt.clock())
    if answer == "unknown":
        raise Refused(404, f"no delivery {delivery_id}")
    found = await ops.delivery_detail(rt.store, delivery_id)
    if found is None:  # gone meanwhile (a purge)
        raise Refused(404, f"no delivery {delivery_id}")
    if answer == "busy":
        raise Refused(
            409, f"delivery {delivery_id} is {found.delivery.state}: it will be sent anyway"
        )
    if rt.dispatcher is not None:
        rt.dispatcher.wake()
    return _json(s.Replayed(delivery=s.Delivery.of(found.delivery, found.attempts)))


async def bulk_replay(request: Request, rt: Runtime) -> Response:
    b: s.BulkReplay = await _body(request, s.BulkReplay)
    now = rt.clock()
    where = DeliveryFilter(
        state=b.state,
        destination=b.destination,
        since=_moment(b.since, now, "since"),
        until=_moment(b.until, now, "until"),
    )
    result = await ops.replay_matching(rt.store, where, now, dry_run=b.dry_run)
    if result.replayed and rt.dispatcher is not None:
        rt.dispatcher.wake()
    return _json(
        s.BulkReplayed(
            dry_run=b.dry_run, matched=result.matched, replayed=result.replayed, ids=result.ids
        )
    )


async def test_destination(request: Request, rt: Runtime) -> Response:
    name: str = request.path_params["destination"]
    b: s.TestRequest = await _body(request, s.TestRequest)
    sent = await ops.send_test(rt, name, b.status)
    if sent is None:
        known = ", ".join(sorted(rt.rulebook.rules.destinations)) or "none"
        raise Refused(404, f"no destination {name!r} in the rules (known: {known})")
    return _json(
        s.TestResult(
            destination=name,
            delivered=sent.delivered,
            transient=sent.transient,
            error=sent.error,
            duration_ms=round(sent.seconds * 1000, 3),
            event=sent.event,
        )
    )


def _reloaded(rt: Runtime, problems: list[str]) -> s.Reloaded:
    rules = rt.rulebook.rules
    return s.Reloaded(
        reloaded=not problems,
        hash=getattr(rt.rulebook, "hash", None),
        sources=len(rules.sources),
        destinations=len(rules.destinations),
        routes=len(rules.routes),
        problems=problems,
    )


async def reload_rules(request: Request, rt: Runtime) -> Response:
    problems = rt.rulebook.reload()
    return _json(_reloaded(rt, problems), 422 if problems else 200)


async def list_rejected(request: Request, rt: Runtime) -> Response:
    q: s.RejectedQuery = _query(request, s.RejectedQuery)
    rows = await rt.store.list_rejected(q.source, q.limit)
    return _json(s.RejectedList(rejected=[s.Rejected.of(r) for r in rows]))


async def list_quarantine(request: Request, rt: Runtime) -> Response:
    q: s.QuarantineQuery = _query(request, s.QuarantineQuery)
    rows = await rt.store.list_quarantined(q.limit, include_reprocessed=q.all)
    return _json(s.QuarantineList(quarantined=[s.Quarantined.of(r) for r in rows]))


async def list_silences(request: Request, rt: Runtime) -> Response:
    q: s.SilenceQuery = _query(request, s.SilenceQuery)
    now = rt.clock()
    views = await silences.listing(rt.store, now, include_ended=q.all)
    return _json(s.SilenceList(silences=[s.SilenceOut.of(v, now) for v in views]))


async def create_silence(request: Request, rt: Runtime) -> Response:
    b: s.SilenceRequest = await _body(request, s.SilenceRequest)
    now = rt.clock()
    try:
        made = await silences.create(
            rt.store,
            rt.rulebook.rules,
            matchers=b.matchers,
            duration=b.duration,
            ends_at=_moment(b.ends_at, now, "ends_at"),
            starts_at=_moment(b.starts_at, now, "starts_at"),
            comment=b.comment,
            created_by=b.created_by,
            now=now,
            ids=IdFactory(rt.clock),
        )
    except silences.SilenceError as exc:
        raise Refused(400, "bad silence", [str(exc)]) from None
    return _json(s.SilenceOut.of(silences.SilenceView(made, 0), now), 201)


async def get_silence(request: Request, rt: Runtime) -> Response:
    silence_id = _id(request, "silence_id", "silence")
    found = await silences.view(rt.store, silence_id)
    if found is None:
        raise Refused(404, f"no silence {silence_id}")
    return _json(s.SilenceOut.of(found, rt.clock()))


async def expire_silence(request: Request, rt: Runtime) -> Response:
    silence_id = _id(request, "silence_id", "silence")
    b: s.ExpireRequest = await _body(request, s.ExpireRequest)
    now = rt.clock()
    found = await silences.expire(rt.store, silence_id, now)
    if found is None:
        raise Refused(404, f"no silence {silence_id}")
    released = await silences.release(rt.store, silence_id, now) if b.release else 0
    if released and rt.dispatcher is not None:
        rt.dispatcher.wake()
    after = await silences.view(rt.store, silence_id) if released else found
    return _json(s.SilenceEnded(silence=s.SilenceOut.of(after or found, now), released=released))


async def release_held(request: Request, rt: Runtime) -> Response:
    held_by = _id(request, "held_by", "silence or mute window")
    released = await silences.release(rt.store, held_by, rt.clock())
    if released and rt.dispatcher is not None:
        rt.dispatcher.wake()
    return _json(s.Released(held_by=held_by, released=released))


async def openapi_document(request: Request) -> Response:
    """This API's OpenAPI document (built from ``ENDPOINTS``)."""
    from relay.admin.openapi import document

    return JSONResponse(document(ENDPOINTS))


_ERRORS: dict[int, type[BaseModel]] = {400: s.Error, 401: s.Error, 404: s.Error}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/events",
        list_events,
        "List events, newest first, filtered",
        {200: s.EventPage, **_ERRORS},
        query=s.EventQuery,
    ),
    Endpoint(
        "GET",
        "/events/{event_id}",
        get_event,
        "One event with its deliveries and their attempts",
        {200: s.EventDetail, **_ERRORS},
        params={"event_id": "event"},
    ),
    Endpoint(
        "POST",
        "/events/{event_id}/reroute",
        reroute_event,
        "Route an event again under the rules in force",
        {200: s.Rerouted, **_ERRORS},
        params={"event_id": "event"},
        description="Adds a delivery, due now, to each matching destination the event has no "
        "delivery to yet; running it twice adds nothing.",
    ),
    Endpoint(
        "GET",
        "/deliveries",
        list_deliveries,
        "List deliveries, newest first, filtered",
        {200: s.DeliveryPage, **_ERRORS},
        query=s.DeliveryQuery,
    ),
    Endpoint(
        "GET",
        "/deliveries/{delivery_id}",
        get_delivery,
        "One delivery with its attempts",
        {200: s.Delivery, **_ERRORS},
        params={"delivery_id": "delivery"},
    ),
    Endpoint(
        "POST",
        "/deliveries/{delivery_id}/replay",
        replay_delivery,
        "Replay one dead (or delivered) delivery",
        {200: s.Replayed, 409: s.Error, **_ERRORS},
        params={"delivery_id": "delivery"},
        description="Pending again and due now, its attempt count reset. 409 when it is "
        "pending or sending already.",
    ),
    Endpoint(
        "POST",
        "/replay",
        bulk_replay,
        "Replay every delivery a filter matches (dry run first)",
        {200: s.BulkReplayed, **_ERRORS},
        body=s.BulkReplay,
        description="Replayed deliveries go through the same concurrency and pacing as any "
        "delivery.",
    ),
    Endpoint(
        "POST",
        "/destinations/{destination}/test",
        test_destination,
        "Send a test event to one destination now",
        {200: s.TestResult, **_ERRORS},
        body=s.TestRequest,
        params={"destination": "destination"},
        description="Sent once through the destination's channel, not stored, not retried; "
        "the answer says whether it arrived.",
    ),
    Endpoint(
        "POST",
        "/reload",
        reload_rules,
        "Reload the rules (the last good rules stay on any problem)",
        {200: s.Reloaded, 422: s.Reloaded, 401: s.Error},
    ),
    Endpoint(
        "GET",
        "/rejected",
        list_rejected,
        "The last refused requests, per source: why a callback did not arrive",
        {200: s.RejectedList, 400: s.Error, 401: s.Error},
        query=s.RejectedQuery,
    ),
    Endpoint(
        "GET",
        "/silences",
        list_silences,
        "The silences not ended yet (all with all=true), with what each holds",
        {200: s.SilenceList, 400: s.Error, 401: s.Error},
        query=s.SilenceQuery,
    ),
    Endpoint(
        "POST",
        "/silences",
        create_silence,
        "Silence the deliveries of matching events for a while",
        {201: s.SilenceOut, **_ERRORS},
        body=s.SilenceRequest,
        description="Matching events are stored and routed; their deliveries are held as "
        "silenced (kept, listed, replayable) until released.",
    ),
    Endpoint(
        "GET",
        "/silences/{silence_id}",
        get_silence,
        "One silence, with what it holds",
        {200: s.SilenceOut, **_ERRORS},
        params={"silence_id": "silence"},
    ),
    Endpoint(
        "POST",
        "/silences/{silence_id}/expire",
        expire_silence,
        "End a silence now; with release, send what it held",
        {200: s.SilenceEnded, **_ERRORS},
        body=s.ExpireRequest,
        params={"silence_id": "silence"},
    ),
    Endpoint(
        "POST",
        "/held/{held_by}/release",
        release_held,
        "Send what a silence or a route's mute window (mute:<route>) holds",
        {200: s.Released, **_ERRORS},
        params={"held_by": "silence or mute window"},
        description="Each held delivery becomes pending and due now, its attempts reset.",
    ),
    Endpoint(
        "GET",
        "/quarantine",
        list_quarantine,
        "Verified callbacks relay could not read, kept for relay reprocess",
        {200: s.QuarantineList, 400: s.Error, 401: s.Error},
        query=s.QuarantineQuery,
    ),
)


def _route(endpoint: Endpoint) -> Route:
    async def run(request: Request) -> Response:
        runtime: Runtime = request.app.state.relay
        response: Response
        try:
            response = await endpoint.handler(request, runtime)
        except Refused as exc:
            payload: dict[str, Any] = {"error": exc.error}
            if exc.problems:
                payload["problems"] = exc.problems
            response = JSONResponse(payload, status_code=exc.status)
        except StoreUnavailableError as exc:
            response = JSONResponse(
                {"error": str(exc)}, status_code=503, headers={"retry-after": "5"}
            )
        if endpoint.method != "GET":
            # What operators changed, and from where: replays, re-routes, tests, reloads.
            operation = endpoint.handler.__name__
            log.info(
                "admin %s %s: %d",
                operation,
                request.url.path,
                response.status_code,
                extra={
                    "operation": operation,
                    "path": request.url.path,
                    "status": response.status_code,
                    "client": request.client.host if request.client else None,
                },
            )
        return response

    return Route(endpoint.path, run, methods=[endpoint.method])


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"error": f"no admin endpoint at {scope['path']}"}, status_code=404)
    await response(scope, receive, send)


class AdminGate:
    """Lets a request through to the admin routes only with ``Authorization: Bearer <token>``
    (compared in constant time). Without RELAY_ADMIN_TOKEN the API is off: every path 404s,
    so a scan cannot even tell it exists."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.relay
        token = runtime.settings.admin_token
        if token is None:
            await _not_found(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        scheme, _, credential = given.partition(b" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), expected):
            response = JSONResponse(
                {"error": "missing or wrong admin token (Authorization: Bearer <token>)"},
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="relay admin"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def admin_app() -> ASGIApp:
    """The admin API, to mount at /admin."""
    routes = [_route(e) for e in ENDPOINTS]
    routes.append(Route("/openapi.json", openapi_document, methods=["GET"]))
    return AdminGate(Router(routes=routes, default=_not_found))
