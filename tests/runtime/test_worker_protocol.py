"""The worker protocol: the frame schema, a fuzzed decoder, and both ends refusing bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import struct
import threading
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import TaskState, frames, worker
from runtime.context import InstanceContext, TaskContext
from runtime.frames import ProtocolError
from tests.conftest import RuntimeFactory

from . import kind_handlers as kh
from .helpers import statuses

S = TaskState
ERR = ("ValueError", "boom", "Traceback ...")


@pytest.fixture
def store_url() -> str:
    """Memory unless a test picks a store itself (the protocol is independent of it)."""
    return "memory://"


@pytest.fixture(autouse=True)
def test_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("STINT_TEST_DIR", str(tmp_path))  # workers inherit it
    return tmp_path


def raw(*items: Any) -> bytes:
    """A frame of any shape at all (``frames.encode`` with the header, minus its care)."""
    body = msgpack.packb(items, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def body(frame: bytes) -> bytes:
    return frame[4:]


# --- the schema ----------------------------------------------------------------------------

GOOD = {
    frames.LOAD: ("fn-1", "fn", "pkg.mod:fn", None, "pkg.mod:init", None),
    frames.HOOK: ("pre_stop",),
    frames.RUN: (1, b"\xc0", "t1", "fn", 1, 1.5e9),
    frames.CANCEL: (7,),
    frames.EXIT: (),
    frames.LOADED: (4242,),
    frames.LOAD_FAILED: (ERR,),
    frames.HOOK_DONE: ("initializer", None, 0.25),
    frames.RESULT: (1, msgpack.packb({"a": [1, b"x", None], 2: 1.5})),
    frames.ERROR: (3, ERR, ("builtins.ValueError", "builtins.Exception")),
}


def test_every_kind_has_a_schema_and_a_direction() -> None:
    assert set(frames.SCHEMA) == set(GOOD) == frames.TO_WORKER | frames.FROM_WORKER
    assert not frames.TO_WORKER & frames.FROM_WORKER


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_well_formed_frames_pass(kind: str) -> None:
    side = frames.TO_WORKER if kind in frames.TO_WORKER else frames.FROM_WORKER
    assert frames.decode(body(frames.encode(kind, *GOOD[kind])), side) == (kind, GOOD[kind])


BAD = [
    # the cases: an int where result bytes go, msgpack that is no value
    ((frames.RESULT, 1, 2**64 - 1), "field 1 (result)"),
    ((frames.RESULT, 1, 2**30), "field 1 (result)"),
    ((frames.RESULT, 1, b"\xc1"), "field 1 (result)"),
    ((frames.RESULT, 1, b"\x01\x02"), "field 1 (result)"),  # two values
    ((frames.RESULT, 1, b"\xc7\x00\x05"), "field 1 (result)"),  # an (empty) ext type
    ((frames.RESULT, 1, b"\x81\x91\x01\x01"), "field 1 (result)"),  # a list as a map key
    ((frames.RESULT, 1, b"\x01", 3), "has 3 fields, not 2"),
    ((frames.RESULT, 0, b"\x01"), "field 0 (attempt_id)"),
    ((frames.RESULT, True, b"\x01"), "field 0 (attempt_id)"),
    ((frames.ERROR, 1, (1, 2, 3), ()), "field 1 (error)"),
    ((frames.ERROR, 1, ("a", "b"), ()), "field 1 (error)"),
    ((frames.ERROR, 1, ERR, True), "field 2 (types)"),  # the bool of stint-worker/2
    ((frames.ERROR, 1, ERR, "builtins.ValueError"), "field 2 (types)"),
    ((frames.ERROR, 1, ERR, ("builtins.ValueError", 3)), "field 2 (types)"),
    ((frames.ERROR, 1, ERR, ({"a": 1},)), "field 2 (types)"),
    ((frames.ERROR, 1, ERR, ("x" * (frames.MAX_NAME + 1),)), "field 2 (types)"),
    ((frames.ERROR, 1, ERR, ("E",) * (frames.MAX_TYPES + 1)), "field 2 (types)"),
    ((frames.HOOK_DONE, "initializer", None, "0.5"), "field 2 (seconds)"),
    ((frames.HOOK_DONE, "initializer", None, float("nan")), "field 2 (seconds)"),
    ((frames.HOOK_DONE, "teardown", None, 0.5), "field 0 (hook)"),
    ((frames.LOADED, 2**40), "field 0 (pid)"),
    ((frames.LOADED,), "has 0 fields, not 1"),
    ((frames.LOAD_FAILED, ("E", "x" * (frames.MAX_TEXT + 1), "")), "field 0 (error)"),
    ((frames.RUN, 1, b"\xc0", "t1", "fn", 1, 1e9), "unexpected frame kind"),  # wrong direction
    (({"a": 1},), "unexpected frame kind"),  # an unhashable kind (a TypeError once)
    ((["result"], 1), "unexpected frame kind"),
    ((b"result", 1, b"\x01"), "unexpected frame kind"),
]


@pytest.mark.parametrize(("items", "complaint"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_malformed_frames_are_protocol_errors(items: tuple[Any, ...], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        frames.decode(body(raw(frames.PROTOCOL, *items)), frames.FROM_WORKER)


def test_an_error_frame_carries_the_mro_clipped_at_both_ends() -> None:
    class Deep(*(type(f"Base{i}", (Exception,), {}) for i in range(100))):  # type: ignore[misc]
        pass

    names = worker.error_types(Deep())
    assert len(names) == frames.MAX_TYPES
    assert names[0].endswith("Deep") and names[-3:] == [
        "builtins.Exception",
        "builtins.BaseException",
        "builtins.object",
    ]
    long = type("L" * frames.MAX_NAME, (KeyError,), {})
    assert worker.error_types(long()) == [
        "builtins.KeyError",
        "builtins.LookupError",
        "builtins.Exception",
        "builtins.BaseException",
        "builtins.object",
    ]  # a name no frame may carry is left out, not clipped into another name
    frames.validate(frames.ERROR, (1, ERR, tuple(names)))


# --- batches -----------------------------------------------------------------------------

RESULT_ITEM = (frames.RESULT, 9, b"\xc0")


def test_a_batch_decodes_to_its_frames_in_order() -> None:
    items = [frames.pack(kind, *GOOD[kind]) for kind in (frames.RESULT, frames.ERROR)]
    decoded = frames.decode_frames(body(frames.encode_batch(items)), frames.FROM_WORKER)
    assert decoded == [(frames.RESULT, GOOD[frames.RESULT]), (frames.ERROR, GOOD[frames.ERROR])]
    plain = frames.decode_frames(body(frames.encode(frames.LOADED, 7)), frames.FROM_WORKER)
    assert plain == [(frames.LOADED, (7,))]


BAD_BATCHES = {
    "empty": ((), "a batch has 0 frames"),
    "too-many": ((RESULT_ITEM,) * (frames.MAX_BATCH + 1), "a batch has 1025 frames"),
    "bad-field": (
        (RESULT_ITEM, (frames.RESULT, 1, 2**64 - 1)),
        "frame 1 of a batch: field 1 (result)",
    ),
    "not-a-frame": ((RESULT_ITEM, 3), "frame 1 of a batch is int 3, not a frame"),
    "empty-frame": (((),), "frame 0 of a batch is tuple of length 0, not a frame"),
    "nested": (((frames.BATCH, RESULT_ITEM),), "frame 0 of a batch: unexpected frame kind"),
    "wrong-direction": (
        ((frames.CANCEL, 1),),
        "frame 0 of a batch: unexpected frame kind str of length 6: 'cancel'",
    ),
}


@pytest.mark.parametrize("name", BAD_BATCHES)
def test_a_bad_batch_is_a_protocol_error(name: str) -> None:
    items, complaint = BAD_BATCHES[name]
    with pytest.raises(ProtocolError) as caught:
        frames.decode_frames(body(raw(frames.PROTOCOL, frames.BATCH, *items)), frames.FROM_WORKER)
    assert complaint in str(caught.value)


async def test_the_outbox_sends_a_turns_frames_as_one_batch() -> None:
    writes: list[bytes] = []
    outbox = frames.Outbox(writes.append)
    for attempt_id in range(1, frames.MAX_BATCH + 3):
        outbox.add(frames.CANCEL, attempt_id)
    assert len(writes) == 1  # MAX_BATCH reached: the rest wait for the end of the turn
    await asyncio.sleep(0)
    assert len(writes) == 2
    sent = [frame for w in writes for frame in frames.decode_frames(body(w), frames.TO_WORKER)]
    assert sent == [(frames.CANCEL, (i,)) for i in range(1, frames.MAX_BATCH + 3)]
    await asyncio.sleep(0)
    assert len(writes) == 2  # nothing more to send: no empty batch


async def test_the_outbox_keeps_a_batch_within_the_frame_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frames, "_BATCH_ROOM", 120)  # two of these frames fit, not three
    writes: list[bytes] = []
    outbox = frames.Outbox(writes.append)
    for _ in range(3):
        outbox.add(frames.RESULT, 1, msgpack.packb("x" * 40))
    outbox.flush()
    assert [len(frames.decode_frames(body(w), frames.FROM_WORKER)) for w in writes] == [2, 1]


async def test_handler_threads_skip_an_attempt_cancelled_before_it_started() -> None:
    started, release = threading.Event(), threading.Event()
    outcomes: list[tuple[int, Any, BaseException | None]] = []
    done = asyncio.Event()

    def handler(event: Any, ctx: Any) -> Any:
        started.set()
        release.wait(10)
        return event

    def finished(attempt_id: int, value: Any, error: BaseException | None) -> None:
        outcomes.append((attempt_id, value, error))
        if len(outcomes) == 2:
            done.set()

    threads = worker.HandlerThreads(handler, finished)
    threads.LIMIT = 1  # one thread: the second attempt waits for the first
    instance = InstanceContext("fn-1", "fn", "process")
    contexts = [TaskContext(f"t{i}", "fn", 1, 1e12, instance) for i in (1, 2)]
    threads.submit(1, "a", contexts[0])
    threads.submit(2, "b", contexts[1])
    await asyncio.to_thread(started.wait, 10)
    contexts[1].request_stop()
    release.set()
    async with asyncio.timeout(10):
        await done.wait()
    assert outcomes == [(1, "a", None), (2, None, None)]  # the handler never saw "b"


def test_the_worker_side_checks_the_runtimes_frames() -> None:
    bad = [
        (frames.LOAD, 1, "fn", "m:f", None, None, None),
        (frames.LOAD, "fn-1", "fn", "m:f", None, None),
        (frames.RUN, 1, "payload as str", "t1", "fn", 1, 1e9),
        (frames.RUN, 1, b"\xc0", "t1", "fn", 1, 1),
        (frames.CANCEL, -1),
        (frames.HOOK, None),
        (frames.EXIT, 1),
        (frames.RESULT, 1, b"\x01"),
    ]
    for items in bad:
        with pytest.raises(ProtocolError):
            frames.decode(body(raw(frames.PROTOCOL, *items)), frames.TO_WORKER)


def test_messages_describe_big_values_briefly() -> None:
    with pytest.raises(ProtocolError) as caught:
        frames.decode(body(raw(frames.PROTOCOL, frames.LOADED, "p" * 100_000)), frames.FROM_WORKER)
    assert len(str(caught.value)) < 300


async def test_read_refuses_a_claim_over_the_cap_before_reading_it() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\xff\xff\xff\xff" + b"\x00" * 10)
    with pytest.raises(ProtocolError, match="over the"):
        await frames.read(reader, frames.FROM_WORKER)


# --- fuzz: only ProtocolError, and no allocation beyond the caps ----------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20) | st.sampled_from(sorted(GOOD)),
    lambda inner: st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip
structured = st.builds(
    lambda kind, fields: msgpack.packb((frames.PROTOCOL, kind, *fields), use_bin_type=True),
    st.sampled_from(sorted(GOOD)) | values,
    st.lists(values, max_size=7),
)
mutated = st.builds(
    lambda kind, at, byte: _mutate(msgpack.packb((frames.PROTOCOL, kind, *GOOD[kind])), at, byte),
    st.sampled_from(sorted(GOOD)),
    st.integers(0, 10_000),
    st.integers(0, 255),
)


def _mutate(data: bytes, at: int, byte: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([byte]) + data[at + 1 :]


def _decode_within_caps(data: bytes) -> None:
    """Decode ``data`` both ways; only a ProtocolError may come out, and the decoder may not
    allocate more than a small multiple of the bytes it was given."""
    tracemalloc.start()
    try:
        for accept in (frames.FROM_WORKER, frames.TO_WORKER):
            try:
                kind, fields = frames.decode(data, accept)
            except ProtocolError:
                continue
            frames.validate(kind, fields)  # what passes is of the declared shape
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 256 * 1024 + 200 * len(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | structured | mutated)
def test_fuzz_the_frame_decoder(data: bytes) -> None:
    _decode_within_caps(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_the_frame_reader(data: bytes) -> None:
    async def read_all() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        with contextlib.suppress(ProtocolError, asyncio.IncompleteReadError):
            while True:
                await frames.read(reader, frames.FROM_WORKER, max_frame=1024)

    asyncio.run(read_all())


# --- the worker refuses what the runtime must never send --------------------------------------


@contextlib.asynccontextmanager
async def worker_process() -> AsyncIterator[
    tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]
]:
    """A worker started as the runtime starts one, with the test on the other end."""
    ours, theirs = socket.socketpair()
    process = await asyncio.create_subprocess_exec(
        *worker.command(theirs.fileno()),
        pass_fds=(theirs.fileno(),),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=worker.environment(),
        start_new_session=True,
    )
    theirs.close()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        yield process, reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.communicate()


LOAD = frames.encode(
    frames.LOAD, "fn-1", "fn", "tests.runtime.kind_handlers:echo", None, None, None
)


@pytest.mark.parametrize(
    "frame",
    [
        frames.encode(frames.RUN, 1, b"\xc0", "t1", "fn", 1, 1e9),  # before the load frame
        LOAD + LOAD,
        LOAD + frames.encode(frames.RUN, 1, b"\xc0", "t1", "fn", "1", 1e9),
        LOAD + raw(frames.PROTOCOL, {"a": 1}),  # an unhashable kind: once a TypeError
        LOAD + raw(frames.PROTOCOL, frames.BATCH, *[(frames.CANCEL, 1)] * (frames.MAX_BATCH + 1)),
        LOAD + raw(frames.PROTOCOL, frames.BATCH, (frames.CANCEL, 1), (frames.CANCEL, -1)),
        LOAD + frames.encode(frames.RESULT, 1, b"\xc0"),  # a frame the worker sends, not reads
        b"\x00\x00\x00\x02\xc1\xc1",
    ],
    ids=[
        "run-first",
        "two-loads",
        "bad-field",
        "unhashable-kind",
        "batch-too-many",
        "batch-bad-frame",
        "wrong-direction",
        "garbage",
    ],
)
async def test_the_worker_exits_on_a_protocol_error(frame: bytes) -> None:
    async with worker_process() as (process, _, writer):
        writer.write(frame)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
        assert process.returncode == worker.PROTOCOL_EXIT
        assert b"the runtime broke the protocol" in stderr
        assert b"Traceback" not in stderr


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[Any]:
    """The next ``count`` frames from a worker, however it batched them."""
    found: list[Any] = []
    while len(found) < count:
        found += await frames.read(reader, frames.FROM_WORKER)
    assert len(found) == count
    return found


async def test_the_worker_serves_a_task_and_reports_import_paths() -> None:
    async with worker_process() as (process, reader, writer):
        writer.write(LOAD + frames.encode(frames.RUN, 1, msgpack.packb([1]), "t1", "fn", 1, 1e12))
        async with asyncio.timeout(10):
            loaded, (kind, (attempt_id, result)) = await read_frames(reader, 2)
        assert loaded == (frames.LOADED, (process.pid,))
        assert (kind, attempt_id) == (frames.RESULT, 1)
        assert msgpack.unpackb(result)["echo"] == [1]
    async with worker_process() as (_, reader, writer):
        writer.write(frames.encode(frames.LOAD, "fn-1", "fn", "no_such_module:f", None, None, None))
        async with asyncio.timeout(10):
            [(kind, ((kind_name, message, _),))] = await frames.read(reader, frames.FROM_WORKER)
    assert (kind, kind_name) == (frames.LOAD_FAILED, "ModuleNotFoundError")
    assert "No module named 'no_such_module'" in message
    assert "searched the runtime's sys.path" in message and str(pathlib.Path.cwd()) in message


# --- the runtime refuses what a worker must never send ---------------------------------------

HOSTILE = {
    "int-overflow": frames.encode(frames.RESULT, 1, 2**64 - 1),  # once: reader dead, unseen
    "int-size": frames.encode(frames.RESULT, 1, 2**20),  # once: bytes(n), any n
    "not-msgpack": frames.encode(frames.RESULT, 1, b"\xc1"),  # once: a Succeeded, unreadable
    "ext-type": frames.encode(frames.RESULT, 1, b"\xc7\x00\x05"),
    "list-key": frames.encode(frames.RESULT, 1, b"\x81\x91\x01\x01"),
    "extra-field": frames.encode(frames.RESULT, 1, b"\x01", 3),
    "error-of-ints": frames.encode(frames.ERROR, 1, (1, 2, 3), ()),
    "types-str": frames.encode(frames.ERROR, 1, ERR, "yes"),
    "types-too-many": frames.encode(frames.ERROR, 1, ERR, ["E"] * (frames.MAX_TYPES + 1)),
    "hook-seconds": frames.encode(frames.HOOK_DONE, "pre_stop", None, "soon"),
    "unhashable-kind": raw(frames.PROTOCOL, {"a": 1}),
    "batch-too-many": raw(frames.PROTOCOL, frames.BATCH, *[RESULT_ITEM] * (frames.MAX_BATCH + 1)),
    "batch-bad-frame": raw(frames.PROTOCOL, frames.BATCH, RESULT_ITEM, (frames.RESULT, 1, 2**40)),
    "batch-nested": raw(frames.PROTOCOL, frames.BATCH, (frames.BATCH, RESULT_ITEM)),
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_bad_frame_kills_the_worker_and_the_attempt_is_retried(
    make_runtime: RuntimeFactory, name: str
) -> None:
    rt = await make_runtime()
    rt.register("fn", kh.send_frame, kind="process", retry_backoff=0)
    record = await rt.wait(await rt.invoke("fn", HOSTILE[name]), timeout=15)
    assert (record.status, record.attempts, record.result) == (S.SUCCEEDED, 2, "ok")
    assert record.events[3].status is S.RETRYING
    assert "InstanceCrashedError: the worker broke the protocol" in record.events[3].detail
    assert record.to_dict()["result"] == "ok"
    text = await rt.metrics_text()
    assert 'stint_worker_protocol_errors_total{function="fn"} 1.0' in text
    assert 'stint_instance_stops_total{function="fn",kind="process",reason="crash"} 1.0' in text


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_a_hostile_result_fails_the_attempt_clearly(
    make_runtime: RuntimeFactory, store: str, tmp_path: pathlib.Path
) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'tasks.db'}"
    rt = await make_runtime(store=url)
    rt.register("fn", kh.send_frame, kind="process", max_retries=0)
    record = await rt.wait(await rt.invoke("fn", frames.encode(frames.RESULT, 1, 2**32)), 15)
    assert statuses(record) == ["Enqueued", "Dequeued", "Running", "Failed"]
    assert record.error is not None and record.error.type == "InstanceCrashedError"
    assert "field 1 (result) of a 'result' frame must be one msgpack value" in record.error.message
    assert "got int 4294967296" in record.error.message
    assert record.to_dict()["result"] is None
    assert (await rt.get(record.task_id)).status is S.FAILED


async def test_a_bad_frame_while_starting_makes_the_start_fail(
    make_runtime: RuntimeFactory, test_dir: pathlib.Path
) -> None:
    (test_dir / "frame").write_bytes(frames.encode(frames.HOOK_DONE, "initializer", (1, 2, 3), 0.5))
    rt = await make_runtime()
    rt.register("fn", kh.echo, kind="process", initializer=kh.frame_initializer)
    record = await rt.wait(await rt.invoke("fn"), timeout=15)
    assert statuses(record) == ["Enqueued", "Dequeued", "Invalid"]
    assert "the worker broke the protocol" in record.events[-1].detail
    assert "field 1 (error)" in record.events[-1].detail
