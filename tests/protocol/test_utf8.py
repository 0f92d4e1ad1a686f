"""Tests of tidings.protocol.utf8: RFC 6455 §8.1 text validation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.exceptions import ProtocolError
from tidings.protocol.utf8 import Utf8Decoder, decode_utf8


def test_rfc6455_8_1_valid_text_decodes() -> None:
    assert decode_utf8("κόσμε".encode()) == "κόσμε"


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\xce"],
    ids=["invalid byte", "overlong", "surrogate", "above U+10FFFF", "truncated"],
)
def test_rfc6455_8_1_invalid_text_fails_with_1007(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_utf8(data)
    assert info.value.code == 1007


def test_rfc6455_8_1_invalid_sequence_fails_at_the_fragment_where_it_appears() -> None:
    # Autobahn 6.4.1: the message is cut before its end, yet the fragment
    # holding 0xF4 0x90 can never become valid and must fail at once.
    decoder = Utf8Decoder()
    assert decoder.decode("κόσμε".encode(), False) == "κόσμε"
    with pytest.raises(ProtocolError) as info:
        decoder.decode(b"\xf4\x90", False)
    assert info.value.code == 1007


def test_a_code_point_split_across_fragments_is_kept_whole() -> None:
    decoder = Utf8Decoder()
    data = "ü€𝄞".encode()
    assert "".join(
        decoder.decode(data[i : i + 1], i == len(data) - 1) for i in range(len(data))
    ) == ("ü€𝄞")


def test_a_message_ending_inside_a_code_point_fails() -> None:
    decoder = Utf8Decoder()
    assert decoder.decode(b"\xe2\x82", False) == ""
    with pytest.raises(ProtocolError):
        decoder.decode(b"", True)


@given(st.text(), st.lists(st.integers(min_value=0, max_value=50), max_size=10))
def test_any_text_split_anywhere_decodes_back(text: str, cuts: list[int]) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    decoder = Utf8Decoder()
    parts = [
        decoder.decode(data[a:b], b == len(data)) for a, b in itertools.pairwise(points)
    ]
    if len(points) == 1:
        parts.append(decoder.decode(b"", True))
    assert "".join(parts) == text


@given(st.binary(max_size=64))
def test_incremental_and_whole_decoding_agree(data: bytes) -> None:
    try:
        whole: str | None = decode_utf8(data)
    except ProtocolError:
        whole = None
    decoder = Utf8Decoder()
    try:
        parts = [decoder.decode(data[i : i + 1], False) for i in range(len(data))]
        parts.append(decoder.decode(b"", True))
        incremental: str | None = "".join(parts)
    except ProtocolError:
        incremental = None
    assert whole == incremental


def test_copy_continues_from_the_same_state_without_changing_the_original() -> None:
    # Used to check a text frame still arriving (found by Autobahn 6.4.4).
    decoder = Utf8Decoder()
    assert decoder.decode("κ".encode()[:1], False) == ""
    clone = decoder.copy()
    with pytest.raises(ProtocolError) as info:
        clone.decode(b"\xff", False)
    assert info.value.code == 1007
    assert decoder.decode("κ".encode()[1:], True) == "κ"
    assert decoder.copy().decode("ό".encode(), True) == "ό"
