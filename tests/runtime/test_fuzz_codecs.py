"""Fuzzing the decoders of untrusted bytes (stored records, payloads) and the name rules.

The property everywhere: whatever comes in, the answer is a value or a declared
error (WireFormatError, PayloadError, ConfigError) — never another exception —
and decoding allocates no more than the input's size allows.
"""

from __future__ import annotations

import contextlib
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import codec
from runtime.config import check_name
from runtime.errors import ConfigError, InvalidTaskIdError, PayloadError
from runtime.ids import check_task_id
from runtime.record import ErrorInfo, TaskRecord
from runtime.states import TaskState
from runtime.wire import RECORD_TAG, RECORD_VERSION, WireFormatError, pack_record, unpack_record

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Allocation bound for decoding n bytes: each byte can at most become one small
# object (an empty list or dict is the largest, ~64-100 bytes), plus a constant.
PER_BYTE, SLACK = 200, 64 * 1024


def peak_allocation(fn: Callable[[], Any]) -> int:
    """Bytes allocated at the peak while ``fn`` runs (its result is dropped first)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# records -------------------------------------------------------------------------------


def sample_record() -> TaskRecord:
    record = TaskRecord("t1", "fn", codec.encode({"k": [1, b"x"]}), 1.5)
    record.status = TaskState.FAILED
    record.result_bytes = codec.encode("r")
    record.error = ErrorInfo("ValueError", "boom", "Traceback ...")
    record.attempts, record.retries = 2, 1
    record.started_at, record.ended_at, record.instance_id = 2.0, 3.5, "fn-1"
    record._events += [("Dequeued", 1.6, "d"), ("Running", 2.0, "r"), ("Failed", 3.5, "f")]
    return record


def fields_of(record: TaskRecord) -> tuple[Any, ...]:
    return (
        record.task_id, record.function, record.status, record.payload_bytes, record.result_bytes,
        record.error, record.attempts, record.retries, record.created_at, record.started_at,
        record.ended_at, record.instance_id, record.raw_events(),
    )  # fmt: skip


def check_unpack(data: bytes) -> None:
    """unpack_record(data) is a well-typed record or a WireFormatError, nothing else."""
    try:
        record = unpack_record(data)
    except WireFormatError:
        return
    assert isinstance(record.task_id, str) and isinstance(record.function, str)
    assert isinstance(record.status, TaskState) and isinstance(record.payload_bytes, bytes)
    assert record.attempts >= 0 and record.retries >= 0
    assert all(isinstance(TaskState(s), TaskState) for s, _, _ in record.raw_events())
    # what was accepted packs again, to the same record
    assert fields_of(unpack_record(pack_record(record))) == fields_of(record)


VALID = pack_record(sample_record())


@fuzz
@given(st.binary(max_size=512))
def test_unpack_record_of_random_bytes(data: bytes) -> None:
    check_unpack(data)


@fuzz
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(VALID)))  # fmt: skip
def test_unpack_record_of_damaged_records(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for at, byte in flips:
        data[at] = byte
    check_unpack(bytes(data[:cut]) if cut % 3 == 0 else bytes(data))


anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4).map(tuple),
    max_leaves=8,
)  # fmt: skip
state_name = st.sampled_from([s.value for s in TaskState]) | st.text(max_size=10)
timestamp = st.floats(allow_nan=False) | st.integers(-5, 5)
valid_fields = (
    st.text(max_size=8), st.text(max_size=8), st.sampled_from([s.value for s in TaskState]),
    st.binary(max_size=8), st.none() | st.binary(max_size=8),
    st.none() | st.tuples(st.text(max_size=4), st.text(max_size=4), st.text(max_size=4)),
    st.integers(0, 9), st.integers(0, 9), timestamp, st.none() | timestamp,
    st.none() | timestamp, st.none() | st.text(max_size=8),
    st.lists(st.tuples(state_name, timestamp, st.text(max_size=8)), max_size=3).map(tuple),
)  # fmt: skip


@st.composite
def record_shaped(draw: st.DrawFn) -> bytes:
    """The right tag, version and length; every field valid but (at most) two, which are
    anything at all."""
    wild = draw(st.sets(st.integers(0, len(valid_fields) - 1), max_size=2))
    fields = [draw(anything if i in wild else valid) for i, valid in enumerate(valid_fields)]
    return msgpack.packb((RECORD_TAG, RECORD_VERSION, *fields), use_bin_type=True)


@fuzz
@given(record_shaped())
def test_unpack_record_checks_every_field(data: bytes) -> None:
    check_unpack(data)


@fuzz
@given(st.binary(max_size=256))
def test_unpack_record_allocates_within_the_caps(data: bytes) -> None:
    peak = peak_allocation(lambda: check_unpack(data))
    assert peak <= PER_BYTE * len(data) + SLACK


# payloads ---------------------------------------------------------------------------------

keys = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4) | st.binary(max_size=4)
leaves = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999))
    | st.just(object()) | st.sets(st.integers(), max_size=2)
)  # fmt: skip
payloads = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(keys | st.tuples(keys, keys), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@fuzz
@given(payloads)
def test_encode_payload_accepts_only_what_decodes(value: Any) -> None:
    try:
        data = codec.encode_payload(value, 1 << 16)
    except PayloadError:
        return
    decoded = codec.decode(data)  # never raises for what invoke accepted
    assert plain(decoded)
    assert codec.encode(decoded) == data  # and it is the same value (tuples read as lists)


def plain(value: Any) -> bool:
    """Only the values a payload may hold: no ExtType, Timestamp, tuple or other object."""
    if isinstance(value, list):
        return all(plain(item) for item in value)
    if isinstance(value, dict):
        return all(plain(k) and plain(v) for k, v in value.items())
    return value is None or type(value) in (bool, int, float, str, bytes)


@fuzz
@given(st.binary(max_size=512) | st.sampled_from([b"\xd4\x01\x00", b"\xc7\x00\x05"]))
def test_decode_of_random_bytes(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        assert plain(codec.decode(data))


@fuzz
@given(st.binary(max_size=256))
def test_decode_allocates_within_the_caps(data: bytes) -> None:
    def attempt() -> None:
        with contextlib.suppress(PayloadError):
            codec.decode(data)

    assert peak_allocation(attempt) <= PER_BYTE * len(data) + SLACK


HOSTILE = [
    b"\xdd\xff\xff\xff\xff",  # an array of 2**32-1 items
    b"\xdf\xff\xff\xff\xff",  # a map of 2**32-1 pairs
    b"\xdb\xff\xff\xff\xff",  # a str of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # a bin of 4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # an ext of 4 GiB
    b"\x9f" + b"\xdd\xff\xff\xff\xff" * 15,  # fifteen of those arrays, nested in one
]


@pytest.mark.parametrize("data", HOSTILE)
def test_length_claims_beyond_the_buffer_allocate_nothing(data: bytes) -> None:
    def both() -> None:
        with pytest.raises(PayloadError):
            codec.decode(data)
        with pytest.raises(WireFormatError):
            unpack_record(data)

    assert peak_allocation(both) < SLACK


# names ---------------------------------------------------------------------------------------

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@fuzz
@given(st.text(max_size=12) | st.from_regex(r"[A-Za-z_][\w.\-]{0,6}\s?", fullmatch=True))
def test_names_and_ids_accept_only_their_characters(text: str) -> None:
    try:
        check_name(text)
    except ConfigError:
        pass
    else:
        assert set(text) <= NAME_CHARS and 1 <= len(text) <= 128
    try:
        check_task_id(text)
    except InvalidTaskIdError:
        pass
    else:
        assert set(text) <= NAME_CHARS and 1 <= len(text) <= 128  # ids may hold "." too


@pytest.mark.parametrize("bad", ["evil\n", "evil\r\n", "a\nb", "\nevil"])
def test_a_trailing_newline_is_not_part_of_a_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        check_name(bad)
    with pytest.raises(InvalidTaskIdError):
        check_task_id(bad)


def test_nan_timestamps_are_numbers() -> None:
    # a NaN timestamp is odd but harmless: it is a float, as the schema says
    record = sample_record()
    record.ended_at = math.nan
    assert math.isnan(unpack_record(pack_record(record)).ended_at or 0.0)
