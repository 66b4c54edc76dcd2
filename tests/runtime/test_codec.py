"""Payload encoding and the limits on decoding outside bytes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import TaskState, codec
from runtime.errors import PayloadError
from tests.conftest import RuntimeFactory

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


@given(values)
def test_round_trip(value: object) -> None:
    assert codec.decode(codec.encode_payload(value, 1 << 20)) == value


def test_decode_refuses_claims_bigger_than_the_buffer() -> None:
    # an array header claiming 2**32-1 entries in a 5-byte buffer
    with pytest.raises(PayloadError):
        codec.decode(b"\xdd\xff\xff\xff\xff")


def test_decode_refuses_ext_types() -> None:
    with pytest.raises(PayloadError):
        codec.decode(msgpack.packb(msgpack.ExtType(5, b"abc")))


def test_oversized_and_unencodable() -> None:
    with pytest.raises(PayloadError, match="over max_payload_bytes"):
        codec.encode_payload(b"x" * 20, 10)
    with pytest.raises(PayloadError, match="cannot be encoded"):
        codec.encode_payload({"a": object()}, 100)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        msgpack.ExtType(5, b"abc"),
        msgpack.Timestamp(1_700_000_000, 0),
        [1, {"when": msgpack.Timestamp(0, 1)}],
        {"k": msgpack.ExtType(1, b"")},
        {(1, 2): "a tuple key reads back as an unhashable list"},
        nested(1024),  # msgpack encodes it; its decoder stops at 1,024 levels
    ],
    ids=["ext", "timestamp", "nested-timestamp", "nested-ext", "tuple-key", "too-deep"],
)
def test_values_that_would_not_decode_are_refused(value: Any) -> None:
    with pytest.raises(PayloadError, match="would not decode back"):
        codec.encode_payload(value, 1 << 20)
    with pytest.raises(ValueError, match="would not decode back"):
        codec.encode(value)  # results too: the instance turns it into ResultEncodingError


def test_decode_raises_only_payload_error() -> None:
    for garbage in (b"\xc1", b"\x92\x01", b"\x91" * 2000 + b"\xc0", b"\x81\x92\x01\x02\x03"):
        with pytest.raises(PayloadError, match="not a valid stint payload"):
            codec.decode(garbage)


def test_plain_scalars_skip_the_decode_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(data: bytes, size: int) -> Any:
        raise AssertionError("a scalar payload paid for a decode")

    monkeypatch.setattr(codec, "_unpack", no_decode)
    for value in (None, 1, -(2**63), 2**64 - 1, 1.5, True, "s", b"b"):
        codec.encode_payload(value, 1 << 10)


async def echo(event: Any, ctx: Any) -> Any:
    return event


async def test_invoke_refuses_what_could_never_be_decoded(make_runtime: RuntimeFactory) -> None:
    rt = await make_runtime()
    rt.register("echo", echo)
    for value in (msgpack.ExtType(1, b"x"), {"at": msgpack.Timestamp(0, 0)}):
        with pytest.raises(PayloadError, match="ExtType and Timestamp"):
            await rt.invoke("echo", value, task_id="t1")
    assert await rt.list() == []  # nothing was stored
    assert (await rt.wait(await rt.invoke("echo", {"ok": 1}, task_id="t1"), timeout=5)).result == {
        "ok": 1
    }


async def test_a_result_that_could_never_be_decoded_fails_the_task(
    make_runtime: RuntimeFactory,
) -> None:
    rt = await make_runtime()

    async def stamp(event: Any, ctx: Any) -> Any:
        return {"at": msgpack.Timestamp(0, 0)}

    rt.register("stamp", stamp, max_retries=0)
    record = await rt.wait(await rt.invoke("stamp"), timeout=5)
    assert record.status is TaskState.FAILED and record.error is not None
    assert record.error.type == "ResultEncodingError"
    assert record.result is None
