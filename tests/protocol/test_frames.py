"""Tests of tidings.protocol.frames: RFC 6455 §5 framing."""

from __future__ import annotations

import itertools
import os
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.exceptions import PayloadTooBig, ProtocolError
from tidings.protocol import frames as frames_module
from tidings.protocol.frames import (
    RECEIVE_INTO,
    RSV1,
    Frame,
    FrameParser,
    Opcode,
    apply_mask,
    parse_close,
    serialize_close,
    serialize_frame,
    serialize_header,
)
from tidings.protocol.limits import MAX_MESSAGE_SIZE

from .reading import receive_steps

MASK = bytes.fromhex("37fa213d")


def parse_all(data: bytes, *, expect_mask: bool, rsv_allowed: int = 0) -> list[Frame]:
    parser = FrameParser(expect_mask=expect_mask)
    parser.rsv_allowed = rsv_allowed
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- RFC 6455 §5.7 examples, byte for byte --------------------------------


def test_rfc6455_5_7_single_frame_unmasked_text() -> None:
    wire = bytes.fromhex("810548656c6c6f")
    assert serialize_frame(Opcode.TEXT, b"Hello") == wire
    assert parse_all(wire, expect_mask=False) == [Frame(Opcode.TEXT, b"Hello")]


def test_rfc6455_5_7_single_frame_masked_text() -> None:
    wire = bytes.fromhex("818537fa213d7f9f4d5158")
    header = serialize_header(Opcode.TEXT, 5, mask=MASK)
    assert header + apply_mask(b"Hello", MASK) == wire
    assert parse_all(wire, expect_mask=True) == [Frame(Opcode.TEXT, b"Hello")]


def test_rfc6455_5_7_fragmented_unmasked_text() -> None:
    first = bytes.fromhex("010348656c")
    second = bytes.fromhex("80026c6f")
    assert serialize_frame(Opcode.TEXT, b"Hel", fin=False) == first
    assert serialize_frame(Opcode.CONTINUATION, b"lo") == second
    assert parse_all(first + second, expect_mask=False) == [
        Frame(Opcode.TEXT, b"Hel", fin=False),
        Frame(Opcode.CONTINUATION, b"lo"),
    ]


def test_rfc6455_5_7_unmasked_ping_and_masked_pong() -> None:
    ping = bytes.fromhex("890548656c6c6f")
    pong = bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert serialize_frame(Opcode.PING, b"Hello") == ping
    assert (
        serialize_header(Opcode.PONG, 5, mask=MASK) + apply_mask(b"Hello", MASK) == pong
    )
    assert parse_all(ping, expect_mask=False) == [Frame(Opcode.PING, b"Hello")]
    assert parse_all(pong, expect_mask=True) == [Frame(Opcode.PONG, b"Hello")]


def test_rfc6455_5_7_256_byte_binary_uses_16_bit_length() -> None:
    payload = bytes(range(256))
    wire = serialize_frame(Opcode.BINARY, payload)
    assert wire[:4] == bytes.fromhex("827e0100")
    assert parse_all(wire, expect_mask=False) == [Frame(Opcode.BINARY, payload)]


def test_rfc6455_5_7_64_kib_binary_uses_64_bit_length() -> None:
    payload = b"\xab" * 65536
    wire = serialize_frame(Opcode.BINARY, payload)
    assert wire[:10] == bytes.fromhex("827f0000000000010000")
    assert parse_all(wire, expect_mask=False) == [Frame(Opcode.BINARY, payload)]


# -- length encoding (RFC 6455 §5.2) ---------------------------------------


@pytest.mark.parametrize(
    ("length", "header_size"),
    [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (1 << 32, 10)],
)
def test_rfc6455_5_2_minimal_length_encoding(length: int, header_size: int) -> None:
    assert len(serialize_header(Opcode.BINARY, length)) == header_size


def test_rfc6455_5_2_64_bit_length_with_top_bit_is_an_error() -> None:
    wire = bytes([0x82, 0x7F]) + (1 << 63).to_bytes(8, "big")
    with pytest.raises(ProtocolError) as info:
        parse_all(wire, expect_mask=False)
    assert info.value.code == 1002


# -- masking direction (RFC 6455 §5.1) -------------------------------------


def test_rfc6455_5_1_server_rejects_unmasked_frame() -> None:
    with pytest.raises(ProtocolError, match="not masked") as info:
        parse_all(serialize_frame(Opcode.TEXT, b"hi"), expect_mask=True)
    assert info.value.code == 1002


def test_rfc6455_5_1_client_rejects_masked_frame() -> None:
    with pytest.raises(ProtocolError, match="is masked") as info:
        parse_all(serialize_frame(Opcode.TEXT, b"hi", mask=True), expect_mask=False)
    assert info.value.code == 1002


def test_rfc6455_5_3_each_frame_gets_a_fresh_mask() -> None:
    keys = {serialize_frame(Opcode.TEXT, b"same", mask=True)[2:6] for _ in range(50)}
    assert len(keys) > 45


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_rfc6455_5_3_masking_is_an_involution(data: bytes, mask: bytes) -> None:
    masked = apply_mask(data, mask)
    assert all(masked[i] == data[i] ^ mask[i % 4] for i in range(len(data)))
    assert apply_mask(masked, mask) == data


# -- reserved bits and opcodes (RFC 6455 §5.2) -----------------------------


@pytest.mark.parametrize("bit", [0x40, 0x20, 0x10])
def test_rfc6455_5_2_rsv_bits_without_extension_fail(bit: int) -> None:
    wire = bytes([0x81 | bit, 0x00])
    with pytest.raises(ProtocolError, match="RSV") as info:
        parse_all(wire, expect_mask=False)
    assert info.value.code == 1002


def test_rfc7692_6_rsv1_allowed_when_negotiated() -> None:
    wire = bytes([0x81 | RSV1, 0x00])
    assert parse_all(wire, expect_mask=False, rsv_allowed=RSV1) == [
        Frame(Opcode.TEXT, b"", rsv1=True)
    ]
    with pytest.raises(ProtocolError):
        parse_all(bytes([0xA1, 0x00]), expect_mask=False, rsv_allowed=RSV1)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_rfc6455_5_2_reserved_opcodes_fail(opcode: int) -> None:
    with pytest.raises(ProtocolError, match="reserved opcode") as info:
        parse_all(bytes([0x80 | opcode, 0x00]), expect_mask=False)
    assert info.value.code == 1002


# -- control frames (RFC 6455 §5.5) ----------------------------------------


def test_rfc6455_5_5_control_frame_payload_over_125_fails() -> None:
    wire = bytes([0x89, 126]) + (126).to_bytes(2, "big") + b"x" * 126
    with pytest.raises(ProtocolError, match="125"):
        parse_all(wire, expect_mask=False)


def test_rfc6455_5_5_fragmented_control_frame_fails() -> None:
    with pytest.raises(ProtocolError, match="fragmented control"):
        parse_all(bytes([0x09, 0x00]), expect_mask=False)


def test_rfc7692_6_1_rsv1_on_control_frame_fails() -> None:
    with pytest.raises(ProtocolError, match="control"):
        parse_all(bytes([0xC9, 0x00]), expect_mask=False, rsv_allowed=RSV1)


def test_header_errors_are_raised_before_the_payload_arrives() -> None:
    parser = FrameParser(expect_mask=False)
    parser.feed(bytes([0x83, 0x7F]))  # reserved opcode, 64-bit length, no payload
    with pytest.raises(ProtocolError):
        parser.next_frame()


def test_max_payload_is_checked_from_the_header_alone() -> None:
    parser = FrameParser(expect_mask=False)
    parser.max_payload = 1000
    parser.feed(bytes([0x82, 0x7F]) + (10**12).to_bytes(8, "big"))
    with pytest.raises(PayloadTooBig) as info:
        parser.next_frame()
    assert info.value.code == 1009


# -- close frames (RFC 6455 §5.5.1, §7.4) ----------------------------------


def test_rfc6455_5_5_1_empty_close_means_no_status() -> None:
    assert parse_close(b"") == (1005, "")
    assert serialize_close(1005) == b""


def test_rfc6455_5_5_1_one_byte_close_payload_fails() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_rfc6455_7_4_invalid_close_codes_fail(code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(code.to_bytes(2, "big"))
    assert info.value.code == 1002


@pytest.mark.parametrize(
    "code",
    [
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
        3000,
        4999,
    ],
)
def test_rfc6455_7_4_valid_close_codes_round_trip(code: int) -> None:
    assert parse_close(serialize_close(code, "bye ü")) == (code, "bye ü")


def test_rfc6455_5_5_1_close_reason_must_be_utf8() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff\xfe")
    assert info.value.code == 1007


def test_serialize_close_refuses_what_may_not_be_sent() -> None:
    with pytest.raises(ValueError, match="may not be sent"):
        serialize_close(1006)
    with pytest.raises(ValueError, match="123"):
        serialize_close(1000, "x" * 124)


# -- any frame round trips in any chunking ----------------------------------


@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION]),
            st.binary(max_size=200) | st.integers(65_530, 66_000).map(bytes),
            st.booleans(),
        ),
        max_size=5,
    ),
    mask=st.booleans(),
    chunk=st.integers(min_value=1, max_value=5000),
)
def test_frames_round_trip_in_any_chunking(
    frames: list[tuple[Opcode, bytes, bool]], mask: bool, chunk: int
) -> None:
    wire = b"".join(
        serialize_frame(op, data, fin=fin, mask=mask) for op, data, fin in frames
    )
    parser = FrameParser(expect_mask=mask)
    received = []
    chunk = max(chunk, len(wire) // 1000)  # bounds the loop on 64 KiB frames
    for i in range(0, len(wire), chunk):
        parser.feed(wire[i : i + chunk])
        while (frame := parser.next_frame()) is not None:
            received.append(frame)
    assert received == [Frame(op, data, fin=fin) for op, data, fin in frames]


# -- peeking at a frame still arriving (found by Autobahn 6.4.3, 6.4.4) ------


@given(
    payload=st.binary(min_size=1, max_size=300),
    arrived=st.integers(0, 300),
    offset=st.integers(0, 300),
    masked=st.booleans(),
)
def test_partial_payload_unmasks_from_any_offset(
    payload: bytes, arrived: int, offset: int, masked: bool
) -> None:
    arrived = min(arrived, len(payload) - 1)  # the frame is incomplete
    offset = min(offset, arrived)
    frame = serialize_frame(Opcode.TEXT, payload, fin=False, mask=masked)
    header = len(frame) - len(payload)
    parser = FrameParser(expect_mask=masked)
    parser.feed(frame[: header + arrived])
    assert parser.next_frame() is None
    assert parser.partial_header() == (Opcode.TEXT, False)
    assert parser.partial_payload(offset) == payload[offset:arrived]
    # Nothing was consumed: the rest completes the frame.
    parser.feed(frame[header + arrived :])
    assert parser.next_frame() == Frame(Opcode.TEXT, payload, fin=False)


def test_partial_header_needs_the_whole_header() -> None:
    parser = FrameParser(expect_mask=True)
    frame = serialize_frame(Opcode.BINARY, b"x" * 300, rsv1=True, mask=True)
    for cut in range(8):  # 2 bytes, a 16-bit length and the mask
        parser = FrameParser(expect_mask=True)
        parser.rsv_allowed = RSV1
        parser.feed(frame[:cut])
        assert parser.next_frame() is None
        assert parser.partial_header() is None
    parser.feed(frame[7:10])
    assert parser.next_frame() is None
    assert parser.partial_header() == (Opcode.BINARY, True)
    assert parser.partial_payload(0) == b"xx"


# -- a large frame still arriving holds memory for what came, not what was
# announced ------------------------------------------------------------------

_TWIN_NAMES = ("payload_buffer", "grow_payload", "finish_payload")


@pytest.fixture(params=["Python", "C"])
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on the pure-Python twin, then on the C one (when built):
    the parser's next_raw and the functions that hold a large payload."""
    if request.param == "Python":
        monkeypatch.setattr(FrameParser, "next_raw", frames_module._py_next_raw)
        for name in _TWIN_NAMES:
            if hasattr(frames_module, f"_py_{name}"):
                monkeypatch.setattr(
                    frames_module, name, getattr(frames_module, f"_py_{name}")
                )
        return "Python"
    try:
        from tidings.protocol import _speedups
    except ImportError:  # pragma: no cover - depends on the install
        pytest.skip("tidings.protocol._speedups was not built")
    monkeypatch.setattr(frames_module, "_speedups", _speedups, raising=False)
    monkeypatch.setattr(FrameParser, "next_raw", frames_module._c_next_raw)
    for name in _TWIN_NAMES:
        if hasattr(_speedups, name):
            monkeypatch.setattr(
                frames_module, name, getattr(_speedups, name), raising=False
            )
    return "C"


def held(parser: FrameParser, received: int) -> int:
    """The size of the buffer the parser holds for the frame still arriving:
    what arrived of its payload and the room offered for the rest."""
    view = parser.get_buffer()
    assert view is not None
    return received + len(view)


def test_a_header_announcing_a_large_payload_pins_little_memory(twin: str) -> None:
    # A 14-byte header announcing 1 MiB used to make the parser allocate the
    # whole MiB at once: a peer pinned max_message_size per connection.
    announced = MAX_MESSAGE_SIZE
    frame_head = serialize_header(Opcode.BINARY, announced, mask=MASK)
    parser = FrameParser(expect_mask=True)
    parser.max_payload = announced
    tracemalloc.start()
    try:
        parser.feed(frame_head + b"x" * 10)
        assert parser.next_frame() is None
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held(parser, 10) <= RECEIVE_INTO
    assert current < 2 * RECEIVE_INTO <= announced // 8


@pytest.mark.parametrize("chunk", [1000, 65_536, 100_000])
def test_the_payload_buffer_grows_with_the_bytes_received(
    twin: str, chunk: int
) -> None:
    payload = random.Random(chunk).randbytes(3 * MAX_MESSAGE_SIZE + 7)
    frame = serialize_frame(Opcode.BINARY, payload, mask=True)
    header = len(frame) - len(payload)
    parser = FrameParser(expect_mask=True)
    parser.feed(frame[: header + 10])
    assert parser.next_frame() is None
    received = 10
    grown = []
    while received + chunk < len(payload):
        parser.feed(frame[header + received : header + received + chunk])
        received += chunk
        assert parser.next_frame() is None
        size = held(parser, received)
        # Never more than 4 times what came, nor than a first 64 KiB.
        assert size <= max(RECEIVE_INTO, 4 * received)
        if not grown or size != grown[-1]:
            grown.append(size)
    # Geometric growth, a few steps and not one per read, each 4 times the
    # last, up to the payload's size: the copies add up to a third of it.
    steps = grown if grown[-1] == len(payload) else [*grown, len(payload)]
    assert len(steps) <= 6, steps
    assert all(-(-b // 4) == a for a, b in itertools.pairwise(steps)), steps
    assert sum(steps[:-1]) <= len(payload) // 3 + len(steps)
    parser.feed(frame[header + received :])
    assert parser.next_frame() == Frame(Opcode.BINARY, payload)
    assert parser.get_buffer() is None


# The twin fixture patches the module once for all examples, which is what
# is wanted here: nothing in it needs resetting between examples.
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(
        st.sampled_from([RECEIVE_INTO - 20, RECEIVE_INTO, 262_143, 262_145])
        | st.integers(RECEIVE_INTO, 1_300_000),
        min_size=1,
        max_size=3,
    ),
    seed=st.integers(0, 2**32),
    chunks=st.lists(st.integers(1, 400_000), min_size=1, max_size=6),
    into=st.lists(st.booleans(), min_size=1, max_size=4),
    mask=st.booleans(),
)
def test_large_frames_parse_the_same_in_any_chunking(
    twin: str,
    *,
    sizes: list[int],
    seed: int,
    chunks: list[int],
    into: list[bool],
    mask: bool,
) -> None:
    rng = random.Random(seed)
    sent = [Frame(Opcode.BINARY, rng.randbytes(n), fin=n % 2 == 0) for n in sizes]
    wire = b"".join(
        serialize_frame(f.opcode, f.payload, fin=f.fin, mask=mask) for f in sent
    )
    steps = receive_steps(wire, chunks, into, mask)
    got = [Frame(*step) for step in steps if isinstance(step, tuple)]
    assert got == sent
    assert steps[-1] is None  # no room offered once every frame is whole


def test_mask_keys_come_from_urandom_in_draws_each_handed_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        # Distinct blocks, each a run of distinct 4-byte keys.
        start = len(draws) * n
        block = b"".join(i.to_bytes(4, "big") for i in range(start, start + n, 4))
        draws.append(block)
        return block

    monkeypatch.setattr(frames_module, "_mask_keys", [])
    monkeypatch.setattr(frames_module.os, "urandom", urandom)
    keys = [frames_module.mask_key() for _ in range(600)]
    assert len(draws) == 3  # 256 keys per system call, not one each
    assert len(set(keys)) == 600
    assert set(keys) <= {block[i : i + 4] for block in draws for i in range(0, 1024, 4)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_reuses_the_parents_mask_keys() -> None:
    frames_module.mask_key()  # the pool now holds keys the parent will use
    assert frames_module._mask_keys
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"empty" if not frames_module._mask_keys else b"kept")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"empty"
    os.close(read)
