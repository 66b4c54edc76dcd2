"""The HTTP API's contract, in-process (httpx's ASGI transport), on the memory and sqlite stores."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import msgpack
import pytest

from runtime import Runtime, StoreError, TaskState
from runtime.service import create_app
from tests.conftest import eventually
from tests.runtime.helpers import patch_or_skip, until_status
from tests.service.conftest import InProcess, problem

INVOKE = "/v1/functions/{}/invocations"


async def invoke(node: InProcess, name: str, body: Any = None, **kwargs: Any) -> Any:
    response = await node.client.post(INVOKE.format(name), json=body or {}, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


# --- invoke ---------------------------------------------------------------------------


async def test_invoke_answers_202_once_enqueued(node: InProcess) -> None:
    response = await node.client.post(INVOKE.format("greet"), json={"payload": {"name": "Ada"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "Enqueued" and set(body) == {"task_id", "status"}
    assert response.headers["location"] == f"/v1/tasks/{body['task_id']}"
    record = await node.rt.wait(body["task_id"], timeout=5)
    assert record.payload == {"name": "Ada"} and record.result == {"hello": "Ada"}


async def test_invoke_with_own_id_and_empty_body(node: InProcess) -> None:
    task_id = await invoke(node, "greet", {"task_id": "mine-1"})
    assert task_id == "mine-1"
    response = await node.client.post(INVOKE.format("greet"), content=b"")
    assert response.status_code == 202
    record = await node.rt.wait(response.json()["task_id"], timeout=5)
    assert record.payload is None


async def test_msgpack_in_and_out(node: InProcess) -> None:
    body = msgpack.packb({"payload": {"name": "Bo", "blob": b"\x00\xff"}})
    response = await node.client.post(
        INVOKE.format("greet"),
        content=body,
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/msgpack"
    task_id = msgpack.unpackb(response.content)["task_id"]
    record = await node.rt.wait(task_id, timeout=5)
    assert record.payload == {"name": "Bo", "blob": b"\x00\xff"}  # bytes kept as bytes
    got = await node.client.get(f"/v1/tasks/{task_id}", headers={"accept": "application/msgpack"})
    assert msgpack.unpackb(got.content) == record.to_dict()


async def test_invoke_with_delay(node: InProcess) -> None:
    task_id = await invoke(node, "greet", {"delay": 0.05})
    record = await node.rt.wait(task_id, timeout=5)
    assert record.status is TaskState.SUCCEEDED


async def test_unknown_function_is_404(node: InProcess) -> None:
    response = await node.client.post(INVOKE.format("nope"), json={})
    assert "greet" in problem(response, 404, "FunctionNotFoundError")["detail"]


async def test_duplicate_task_id_is_409(node: InProcess) -> None:
    await invoke(node, "greet", {"task_id": "twice"})
    response = await node.client.post(INVOKE.format("greet"), json={"task_id": "twice"})
    problem(response, 409, "TaskExistsError")


async def test_payload_over_max_payload_bytes_is_413(node: InProcess) -> None:
    response = await node.client.post(INVOKE.format("greet"), json={"payload": "x" * 2000})
    problem(response, 413, "PayloadTooLargeError")


async def test_body_over_the_cap_is_refused_before_it_is_read(node: InProcess) -> None:
    huge = b'{"payload": "' + b"x" * 100_000 + b'"}'
    response = await node.client.post(
        INVOKE.format("greet"), content=huge, headers={"content-type": "application/json"}
    )
    assert "request body" in problem(response, 413, "PayloadTooLargeError")["detail"]

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b"x" * 1000

    response = await node.client.post(INVOKE.format("greet"), content=chunks())
    problem(response, 413, "PayloadTooLargeError")


@pytest.mark.parametrize(
    ("body", "content_type", "type_"),
    [
        (b'{"payload": 1', "application/json", "InvalidRequestError"),
        (b"[1, 2]", "application/json", "InvalidRequestError"),
        (b'{"paylod": 1}', "application/json", "InvalidRequestError"),
        (b'{"delay": "soon"}', "application/json", "InvalidRequestError"),
        (b'{"task_id": "no spaces"}', "application/json", "InvalidTaskIdError"),
        (b'{"task_id": 7}', "application/json", "InvalidTaskIdError"),
        (b'{"payload": 1180591620717411303424}', "application/json", "PayloadError"),
        (b"[" * 10_000, "application/json", "InvalidRequestError"),
        (b"\xc1", "application/msgpack", "InvalidRequestError"),
        (b"\xdd\xff\xff\xff\xff", "application/msgpack", "InvalidRequestError"),
        (b"\x91" * 5000, "application/msgpack", "InvalidRequestError"),
    ],
)
async def test_invalid_bodies_are_422(
    node: InProcess, body: bytes, content_type: str, type_: str
) -> None:
    response = await node.client.post(
        INVOKE.format("greet"), content=body, headers={"content-type": content_type}
    )
    problem(response, 422, type_)


async def test_unsupported_content_type_is_415(node: InProcess) -> None:
    response = await node.client.post(
        INVOKE.format("greet"), content=b"name=Ada", headers={"content-type": "text/plain"}
    )
    problem(response, 415, "UnsupportedMediaTypeError")


async def test_full_queue_is_429_with_retry_after(node: InProcess) -> None:
    running = await invoke(node, "narrow")
    await until_status(node.rt, running, TaskState.RUNNING)
    await invoke(node, "narrow")  # waits: the one instance is busy
    response = await node.client.post(INVOKE.format("narrow"), json={})
    problem(response, 429, "QueueFullError")
    assert response.headers["retry-after"] == "1"


async def test_a_closed_runtime_is_503(node: InProcess) -> None:
    node.gate.open()
    await node.rt.close()
    response = await node.client.post(INVOKE.format("greet"), json={})
    problem(response, 503, "RuntimeClosedError")
    assert response.headers["retry-after"] == "1"
    problem(await node.client.get("/readyz"), 503, "RuntimeClosedError")


async def test_an_unreachable_store_is_503(
    node: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> None:
        raise StoreError("the store does not answer (test): check the database")

    # the store's own ping: the runtime's code path to it runs for real
    patch_or_skip(monkeypatch, node.rt.store, "ping", down)
    response = await node.client.get("/readyz")
    problem(response, 503, "StoreError")
    assert response.headers["retry-after"] == "1"


# --- read, list, stop -------------------------------------------------------------------


async def test_get_returns_the_record(node: InProcess) -> None:
    task_id = await invoke(node, "greet", {"payload": {"name": "Cy"}})
    record = await node.rt.wait(task_id, timeout=5)
    response = await node.client.get(f"/v1/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(record.to_dict()))
    problem(await node.client.get("/v1/tasks/nope"), 404, "TaskNotFoundError")


async def test_list_filters_and_pages(node: InProcess) -> None:
    ids = [await invoke(node, "greet", {"task_id": f"a-{i}"}) for i in range(3)]
    failed = await invoke(node, "fail", {"task_id": "b-1"})
    for task_id in [*ids, failed]:
        await node.rt.wait(task_id, timeout=5)
    page = (await node.client.get("/v1/tasks")).json()
    assert set(page) == {"tasks", "next_cursor"}
    assert [t["task_id"] for t in page["tasks"]][:4] == ["b-1", "a-2", "a-1", "a-0"]
    only = (await node.client.get("/v1/tasks", params={"function": "fail"})).json()
    assert [t["task_id"] for t in only["tasks"]] == ["b-1"]
    failed_only = await node.client.get("/v1/tasks", params={"status": "Failed"})
    assert [t["task_id"] for t in failed_only.json()["tasks"]] == ["b-1"]
    prefixed = await node.client.get("/v1/tasks", params={"prefix": "a-", "limit": 2})
    assert [t["task_id"] for t in prefixed.json()["tasks"]] == ["a-2", "a-1"]


async def test_list_rejects_bad_queries(node: InProcess) -> None:
    problem(await node.client.get("/v1/tasks", params={"status": "Done"}), 422, "ConfigError")
    problem(await node.client.get("/v1/tasks", params={"limit": "x"}), 422, "InvalidRequestError")
    problem(await node.client.get("/v1/tasks", params={"limit": -1}), 422, "ConfigError")
    response = await node.client.get("/v1/tasks", params={"order": "up"})
    problem(response, 422, "InvalidRequestError")


async def test_list_cursor_walks_every_page(node: InProcess) -> None:
    ids = [await invoke(node, "greet", {"task_id": f"p-{i}"}) for i in range(5)]
    for task_id in ids:
        await node.rt.wait(task_id, timeout=5)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2, "prefix": "p-"}
    while True:
        page = (await node.client.get("/v1/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]


async def test_stop_a_running_task(node: InProcess) -> None:
    task_id = await invoke(node, "hold")
    await until_status(node.rt, task_id, TaskState.RUNNING)
    response = await node.client.post(f"/v1/tasks/{task_id}/stop")
    assert response.status_code == 200
    assert response.json()["status"] == "Stopped"
    again = await node.client.post(f"/v1/tasks/{task_id}/stop")
    assert again.status_code == 200 and again.json()["status"] == "Stopped"  # idempotent


async def test_stop_a_finished_or_unknown_task(node: InProcess) -> None:
    task_id = await invoke(node, "greet")
    await node.rt.wait(task_id, timeout=5)
    problem(await node.client.post(f"/v1/tasks/{task_id}/stop"), 409, "TaskFinishedError")
    problem(await node.client.post("/v1/tasks/nope/stop"), 404, "TaskNotFoundError")


# --- events -----------------------------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str, Any, str | None]]:
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "data" in fields:
            out.append(
                (fields.get("event", "message"), json.loads(fields["data"]), fields.get("id"))
            )
    return out


async def test_events_replay_a_finished_task_then_end(node: InProcess) -> None:
    task_id = await invoke(node, "greet")
    record = await node.rt.wait(task_id, timeout=5)
    response = await node.client.get(f"/v1/tasks/{task_id}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [e[0] for e in events] == ["transition"] * len(record.events) + ["end"]
    assert [e[1]["status"] for e in events[:-1]] == [str(e.status) for e in record.events]
    assert [e[2] for e in events[:-1]] == [str(i) for i in range(1, len(record.events) + 1)]
    resumed = await node.client.get(f"/v1/tasks/{task_id}/events", headers={"last-event-id": "2"})
    assert [e[2] for e in parse_sse(resumed.text)[:-1]] == [
        str(i) for i in range(3, len(record.events) + 1)
    ]


async def test_events_follow_a_live_task_to_its_end(node: InProcess) -> None:
    task_id = await invoke(node, "hold")
    await until_status(node.rt, task_id, TaskState.RUNNING)
    reading = asyncio.create_task(node.client.get(f"/v1/tasks/{task_id}/events"))
    await eventually(lambda: len(node.app.state.streams) == 1)
    await asyncio.sleep(0.12)  # a heartbeat or two while nothing happens
    await node.rt.stop(task_id)
    response = await reading
    events = parse_sse(response.text)
    statuses = [e[1]["status"] for e in events if e[0] == "transition"]
    assert statuses[-2:] == ["Stopping", "Stopped"] and events[-1][0] == "end"
    assert ": keep-alive" in response.text
    assert len(node.app.state.streams) == 0


async def test_events_of_an_unknown_task_is_404(node: InProcess) -> None:
    problem(await node.client.get("/v1/tasks/nope/events"), 404, "TaskNotFoundError")


async def test_a_client_that_goes_away_leaves_no_watcher(node: InProcess) -> None:
    """Raw ASGI: the client disconnects mid-stream; the stream and its pump end."""
    task_id = await invoke(node, "hold")
    await until_status(node.rt, task_id, TaskState.RUNNING)
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if b"Running" in message.get("body", b""):
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/tasks/{task_id}/events",
        "raw_path": f"/v1/tasks/{task_id}/events".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"stint")],
        "client": ("127.0.0.1", 1),
        "server": ("stint", 80),
    }
    before = len(asyncio.all_tasks())
    async with asyncio.timeout(5):
        await node.app(scope, receive, send)
    assert gone.is_set() and len(node.app.state.streams) == 0
    await eventually(lambda: len(asyncio.all_tasks()) <= before)
    node.gate.open()


# --- functions, instances, nodes, health --------------------------------------------------


async def test_functions_show_kind_config_and_instances(node: InProcess) -> None:
    task_id = await invoke(node, "hold")
    await until_status(node.rt, task_id, TaskState.RUNNING)
    response = await node.client.get("/v1/functions")
    assert response.status_code == 200
    functions = {f["name"]: f for f in response.json()["functions"]}
    assert set(functions) == {"greet", "hold", "fail", "narrow"}
    hold = functions["hold"]
    assert hold["kind"] == "async" and hold["config"]["concurrency"] == 10
    assert hold["instances"] == {"Starting": 0, "Ready": 0, "Busy": 1, "Frozen": 0, "Stopping": 0}
    assert hold["running"] == 1 and hold["queued"] == 0 and hold["unfinished"] == 1
    assert functions["fail"]["config"]["max_retries"] == 0


async def test_functions_show_queue_depth(node: InProcess) -> None:
    running = await invoke(node, "narrow")
    await until_status(node.rt, running, TaskState.RUNNING)
    await invoke(node, "narrow")
    functions = {f["name"]: f for f in (await node.client.get("/v1/functions")).json()["functions"]}
    assert functions["narrow"]["queued"] == 1 and functions["narrow"]["running"] == 1


async def test_instances_of_a_function(node: InProcess) -> None:
    task_id = await invoke(node, "greet")
    await node.rt.wait(task_id, timeout=5)
    response = await node.client.get("/v1/functions/greet/instances")
    [instance] = response.json()["instances"]
    assert instance["function"] == "greet" and instance["tasks_served"] == 1
    assert instance["state"] in ("Ready", "Frozen")
    problem(await node.client.get("/v1/functions/nope/instances"), 404, "FunctionNotFoundError")


async def test_nodes_is_404_on_a_store_of_one_process(node: InProcess) -> None:
    if node.rt.store.shared:
        [one] = (await node.client.get("/v1/nodes")).json()["nodes"]
        assert one["node_id"] == node.rt.node_id  # a cluster of one node
        return
    body = problem(await node.client.get("/v1/nodes"), 404, "StoreNotSharedError")
    assert "not shared" in body["detail"]


async def test_health_readiness_and_metrics(node: InProcess) -> None:
    assert (await node.client.get("/healthz")).json() == {"status": "ok"}
    assert (await node.client.get("/readyz")).json() == {"status": "ready"}
    metrics = await node.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "stint_" in metrics.text


async def test_readyz_is_503_before_start() -> None:
    rt = Runtime()
    app = create_app(rt)
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stint") as client:
        problem(await client.get("/readyz"), 503, "RuntimeClosedError")
        assert (await client.get("/healthz")).status_code == 200


async def test_unknown_route_is_a_problem_too(node: InProcess) -> None:
    problem(await node.client.get("/v1/nothing"), 404, "NotFound")
    problem(await node.client.delete("/v1/tasks/x"), 405, "MethodNotAllowed")


async def test_openapi_and_docs(node: InProcess) -> None:
    spec = (await node.client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/functions/{name}/invocations",
        "/v1/tasks/{task_id}",
        "/v1/tasks",
        "/v1/tasks/{task_id}/stop",
        "/v1/tasks/{task_id}/events",
        "/v1/functions",
        "/v1/functions/{name}/instances",
        "/v1/nodes",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    invoke_doc = paths["/v1/functions/{name}/invocations"]["post"]
    assert set(invoke_doc["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    assert {"202", "404", "409", "413", "422", "429", "503"} <= set(invoke_doc["responses"])
    docs = await node.client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


async def test_dashboard_is_one_page_with_a_strict_policy(node: InProcess) -> None:
    response = await node.client.get("/")
    assert response.status_code == 200 and "<title>stint</title>" in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert "connect-src 'self'" in csp
    assert "http://" not in response.text.replace("http://www.w3.org", "")  # no CDN


# --- token --------------------------------------------------------------------------------


async def test_token_guards_every_route_but_healthz(make_runtime: Any) -> None:
    rt = await make_runtime()
    rt.register("greet", _greet)
    app = create_app(rt, token="s3cret")
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://stint") as client:
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/readyz", "/metrics", "/v1/functions", "/v1/tasks", "/openapi.json"):
            response = await client.get(path)
            problem(response, 401, "UnauthorizedError")
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = {"authorization": "Bearer nope"}
        problem(await client.get("/v1/functions", headers=wrong), 401, "UnauthorizedError")
        problem(await client.get("/v1/functions?token=s3cret"), 401, "UnauthorizedError")
        right = {"authorization": "Bearer s3cret"}
        assert (await client.get("/v1/functions", headers=right)).status_code == 200
        response = await client.post(INVOKE.format("greet"), json={}, headers=right)
        assert response.status_code == 202
        # pages a browser opens by address take ?token=
        assert (await client.get("/?token=s3cret")).status_code == 200
        assert (await client.get("/openapi.json?token=s3cret")).status_code == 200
        login = await client.get("/", headers={"accept": "text/html"})
        assert login.status_code == 401 and "?token=" in login.text
        problem(await client.get("/"), 401, "UnauthorizedError")


async def _greet(event: Any, ctx: Any) -> str:
    return "hi"


async def test_a_stopped_redis_makes_readyz_503(
    make_redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No patching: the store really stops answering, and readiness says so; the
    cluster's own actors wait the outage out without logging errors."""
    server = make_redis_server()
    rt = Runtime(f"{server.url}?prefix=ready", close_timeout=2)
    await rt.start()
    try:
        app = create_app(rt, heartbeat=0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stint") as client:
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            response = await client.get("/readyz")
            assert problem(response, 503, "StoreUnavailableError")["detail"].startswith("Redis at")
            assert response.headers["retry-after"] == "1"
    finally:
        await rt.close()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
