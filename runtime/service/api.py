"""The ``/v1`` routes: invoke, read, list, stop and watch tasks; functions, instances, nodes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.routing import APIRoute
from starlette.responses import Response, StreamingResponse

from runtime import Runtime

from . import models
from .bodies import JSON, MSGPACK, decode_object, read_body, respond
from .events import Streams, task_events
from .problems import PROBLEM, InvalidRequestError, StoreNotSharedError
from .views import function_view, instance_view, plain

_FIELDS = frozenset({"payload", "task_id", "delay"})
_PROBLEM_DOC = {"model": models.Problem, "content": {PROBLEM: {}}}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {**_PROBLEM_DOC, "description": _WHY[code]} for code in codes}


_WHY = {
    404: "unknown function or task",
    409: "the task id is taken, or the task already ended",
    413: "the payload (or the request body) is over max_payload_bytes",
    415: "the body is neither JSON nor msgpack",
    422: "invalid payload, task id, delay or query",
    429: "the function's queue is full (see Retry-After)",
    503: "the runtime is closing or its store is unreachable",
}


def _invocation_body() -> dict[str, Any]:
    schema = models.InvocationRequest.model_json_schema()
    return {
        "requestBody": {
            "required": False,
            "content": {JSON: {"schema": schema}, MSGPACK: {"schema": schema}},
        }
    }


class DirectRoute(APIRoute):
    """A route documented like any other, called without FastAPI's per-request machinery
    (dependency solving, parameter validation): its endpoint takes the request and the
    path parameters, which are plain strings. For the hot routes, invoke and get: it
    saves about a third of the app's time per request (see docs/performance.md)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handler


class Api:
    """The routes' shared state: the runtime, the open event streams, the limits."""

    def __init__(self, rt: Runtime, streams: Streams, heartbeat: float, body_cap: int) -> None:
        self.rt = rt
        self.streams = streams
        self.heartbeat = heartbeat
        self.body_cap = body_cap


def api_router(api: Api) -> APIRouter:
    """Every ``/v1`` route."""
    router = APIRouter(prefix="/v1", responses=_problems(503))
    rt = api.rt

    async def invoke(request: Request, name: str) -> Response:
        """Accept a task; answers 202 once it is stored as Enqueued (``Location`` names it)."""
        body = decode_object(request, await read_body(request, api.body_cap))
        payload, task_id, delay = _invocation(body)
        task_id = await rt.invoke(name, payload, task_id=task_id, delay=delay)
        document = {"task_id": task_id, "status": "Enqueued"}
        return respond(request, document, 202, location=f"/v1/tasks/{task_id}")

    router.add_api_route(
        "/functions/{name}/invocations",
        invoke,
        methods=["POST"],
        status_code=202,
        response_model=models.Accepted,
        responses=_problems(404, 409, 413, 415, 422, 429),
        openapi_extra=_invocation_body(),
        summary="Invoke a function",
        tags=["tasks"],
        route_class_override=DirectRoute,
    )

    async def get_task(request: Request, task_id: str) -> Response:
        """The task's record: status, payload, result or error, attempts, every event."""
        return respond(request, (await rt.get(task_id)).to_dict())

    router.add_api_route(
        "/tasks/{task_id}",
        get_task,
        methods=["GET"],
        response_model=models.TaskRecord,
        responses=_problems(404),
        summary="Read a task",
        tags=["tasks"],
        route_class_override=DirectRoute,
    )

    @router.get(
        "/tasks",
        response_model=models.TaskPage,
        responses=_problems(422),
        summary="List tasks",
        tags=["tasks"],
    )
    async def list_tasks(
        request: Request,
        *,
        function: str | None = None,
        status: str | None = None,
        prefix: str | None = None,
        limit: int = Query(50, description="1 to 1000"),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
        created_after: float | None = Query(None, description="epoch seconds"),
        created_before: float | None = Query(None, description="epoch seconds"),
        order: Literal["desc", "asc"] = Query("desc", description="by creation time"),
    ) -> Response:
        """Task records, newest first unless ``order=asc``, with every filter given."""
        page = await rt.list(
            function,
            status,
            prefix,
            limit,
            created_after=created_after,
            created_before=created_before,
            order=order,
            cursor=cursor,
        )
        document = {"tasks": [r.to_dict() for r in page], "next_cursor": page.next_cursor}
        return respond(request, document)

    @router.post(
        "/tasks/{task_id}/stop",
        response_model=models.TaskRecord,
        responses=_problems(404, 409),
        summary="Stop a task",
        tags=["tasks"],
    )
    async def stop(task_id: str, request: Request) -> Response:
        """Stop the task; the record after the stop (Stopped, or Stopping while PreStop runs)."""
        return respond(request, (await rt.stop(task_id)).to_dict())

    @router.get(
        "/tasks/{task_id}/events",
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
            **_problems(404),
        },
        summary="Watch a task (Server-Sent Events)",
        tags=["tasks"],
    )
    async def events(task_id: str, request: Request) -> Response:
        """The history so far, then each transition live (``event: transition``, JSON
        ``data``, ``id`` counting from 1; ``Last-Event-ID`` resumes); ``event: end``
        after the terminal state, then the stream closes. Comments keep it alive."""
        await rt.get(task_id)  # 404 before the stream starts
        body = task_events(
            rt, task_id, api.streams, heartbeat=api.heartbeat, skip=_last_event_id(request)
        )
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)

    @router.get(
        "/functions", response_model=models.Functions, summary="List functions", tags=["functions"]
    )
    async def functions(request: Request) -> Response:
        """Every registered function: kind, configuration, instances by state, queue depth."""
        stats = await rt.function_stats()
        specs = rt.functions
        views = [
            function_view(specs[name], found) for name, found in stats.items() if name in specs
        ]
        return respond(request, {"functions": views})

    @router.get(
        "/functions/{name}/instances",
        response_model=models.Instances,
        responses=_problems(404),
        summary="List a function's instances",
        tags=["functions"],
    )
    async def instances(name: str, request: Request) -> Response:
        """The function's instances: state, tasks in flight, times, tasks served, history."""
        found = await rt.instances(name)
        return respond(request, {"instances": [instance_view(i) for i in found]})

    @router.get(
        "/nodes",
        response_model=models.Nodes,
        responses=_problems(404),
        summary="List the nodes sharing the store",
        tags=["nodes"],
    )
    async def nodes(request: Request) -> Response:
        """The runtimes that share this node's store (redis); 404 on a store of one process."""
        if not rt.store.shared:
            raise StoreNotSharedError(
                f"this node's store ({rt.store.url}) is not shared: it is the only node. "
                "Nodes share a store on redis:// URLs"
            )
        return respond(request, {"nodes": [plain(node) for node in await rt.nodes()]})

    return router


def _invocation(body: dict[str, Any]) -> tuple[Any, str | None, float | None]:
    """``payload``, ``task_id`` and ``delay`` from an invocation body, checked for shape."""
    unknown = sorted(str(key) for key in body if key not in _FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) {', '.join(unknown)} in the invocation: send payload, "
            "and optionally task_id and delay"
        )
    delay = body.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise InvalidRequestError(f"delay={delay!r} must be a number of seconds >= 0, or null")
    return body.get("payload"), body.get("task_id"), delay


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "0")
    return int(raw) if raw.isdigit() else 0
