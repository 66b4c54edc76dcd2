"""Payload encoding and the limits on decoding outside bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import codec
from runtime.errors import PayloadError

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
    with pytest.raises(ValueError):
        codec.decode(b"\xdd\xff\xff\xff\xff")


def test_decode_refuses_ext_types() -> None:
    with pytest.raises(ValueError):
        codec.decode(msgpack.packb(msgpack.ExtType(5, b"abc")))


def test_oversized_and_unencodable() -> None:
    with pytest.raises(PayloadError, match="over max_payload_bytes"):
        codec.encode_payload(b"x" * 20, 10)
    with pytest.raises(PayloadError, match="cannot be encoded"):
        codec.encode_payload({"a": object()}, 100)
