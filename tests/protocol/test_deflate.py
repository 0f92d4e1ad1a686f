"""permessage-deflate (RFC 7692): negotiation, compression, bounded inflation."""

from __future__ import annotations

import itertools
import random
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from tidings.protocol.deflate import (
    EXTENSION_NAME,
    DeflateConfig,
    DeflateParams,
    ExtensionParams,
    PerMessageDeflate,
    client_accept,
    client_offer,
    server_accept,
)

KiB = 1 << 10
MiB = 1 << 20
HELLO = bytes.fromhex("f248cdc9c90700")  # RFC 7692 §7.2.3.1
FULL = DeflateParams(False, False, 15, 15)
DEFAULT = DeflateConfig()


def params(
    snct: bool = False, cnct: bool = False, sbits: int = 15, cbits: int = 15
) -> DeflateParams:
    return DeflateParams(snct, cnct, sbits, cbits)


def pair(
    agreed: DeflateParams, config: DeflateConfig = DEFAULT
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A client and a server sharing ``agreed``."""
    return (
        PerMessageDeflate(agreed, is_client=True, config=config),
        PerMessageDeflate(agreed, is_client=False, config=config),
    )


def send(
    sender: PerMessageDeflate, message: bytes, cuts: Sequence[int] = ()
) -> list[bytes]:
    """Compress ``message`` as frames split at ``cuts``."""
    bounds = [0, *sorted(cuts), len(message)]
    pieces = [message[a:b] for a, b in itertools.pairwise(bounds)]
    return [
        sender.compress(piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]


def receive(receiver: PerMessageDeflate, frames: list[bytes]) -> bytes:
    return b"".join(
        receiver.decompress(frame, i == len(frames) - 1, None)
        for i, frame in enumerate(frames)
    )


def sample(seed: int, size: int) -> bytes:
    """Text-like bytes with repeats at short and long distances."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choices(b"abcdefghij{}:,", k=rng.randint(2, 9))) for _ in range(60)
    ]
    out = bytearray()
    while len(out) < size:
        if out and rng.random() < 0.2:
            start = rng.randrange(len(out))
            out += out[start : start + rng.randint(3, 200)]
        else:
            out += rng.choice(words)
    return bytes(out[:size])


# -- RFC 7692 §7.2.3: examples, byte for byte ---------------------------------


class TestRfcExamples:
    def test_7_2_3_1_compressing_hello(self) -> None:
        """RFC 7692 §7.2.3.1: "Hello" compresses to f2 48 cd c9 c9 07 00."""
        client, server = pair(FULL)
        assert server.compress(b"Hello") == HELLO
        assert client.compress(b"Hello") == HELLO

    def test_7_2_3_1_decompressing_hello_whole_and_fragmented(self) -> None:
        """RFC 7692 §7.2.3.1: one frame, or f2 48 cd + c9 c9 07 00."""
        client, _ = pair(FULL)
        assert client.decompress(HELLO, True, None) == b"Hello"
        client, _ = pair(FULL)
        assert client.decompress(HELLO[:3], False, None) == b"He"
        assert client.decompress(HELLO[3:], True, None) == b"llo"

    def test_7_2_3_2_context_takeover(self) -> None:
        """RFC 7692 §7.2.3.2: the second "Hello" refers back: f2 00 11 00 00."""
        client, server = pair(FULL)
        assert server.compress(b"Hello") == HELLO
        assert server.compress(b"Hello") == bytes.fromhex("f200110000")
        assert client.decompress(HELLO, True, None) == b"Hello"
        assert client.decompress(bytes.fromhex("f200110000"), True, None) == b"Hello"

    def test_7_2_3_2_no_context_takeover(self) -> None:
        """RFC 7692 §7.2.3.2: without context takeover both messages are alike."""
        client, server = pair(params(snct=True))
        assert [server.compress(b"Hello") for _ in range(2)] == [HELLO, HELLO]
        assert [client.decompress(HELLO, True, None) for _ in range(2)] == [
            b"Hello"
        ] * 2

    def test_7_2_3_3_block_with_no_compression(self) -> None:
        """RFC 7692 §7.2.3.3: a stored block."""
        client, _ = pair(FULL)
        data = bytes.fromhex("000500faff48656c6c6f00")
        assert client.decompress(data, True, None) == b"Hello"

    def test_7_2_3_4_block_with_bfinal_set(self) -> None:
        """RFC 7692 §7.2.3.4: BFINAL ends the stream; the next message starts anew."""
        client, _ = pair(FULL)
        data = bytes.fromhex("f348cdc9c9070000")
        assert client.decompress(data, True, None) == b"Hello"
        assert client.decompress(data, True, None) == b"Hello"
        assert client.decompress(HELLO, True, None) == b"Hello"

    def test_7_2_3_5_two_blocks_in_one_message(self) -> None:
        """RFC 7692 §7.2.3.5: "He" flushed, then "llo"."""
        data = bytes.fromhex("f24805000000ffffcac9c90700")
        client, server = pair(FULL)
        assert client.decompress(data, True, None) == b"Hello"
        frames = [server.compress(b"He", fin=False), server.compress(b"llo")]
        assert b"".join(frames) == data

    def test_7_2_3_6_empty_final_fragment(self) -> None:
        """RFC 7692 §7.2.3.6: an empty last fragment compresses to 00."""
        client, server = pair(FULL)
        first = server.compress(b"Hello", fin=False)
        assert first == HELLO + bytes.fromhex("0000ffff")
        assert server.compress(b"", fin=True) == b"\x00"
        assert client.decompress(first, False, None) == b"Hello"
        assert client.decompress(b"\x00", True, None) == b""

    def test_7_2_1_empty_message(self) -> None:
        """RFC 7692 §7.2.1: an empty message still compresses to one byte."""
        client, server = pair(FULL)
        assert server.compress(b"") == b"\x00"
        assert client.decompress(b"\x00", True, None) == b""


# -- Negotiation: the client's side -------------------------------------------


def test_extension_name() -> None:
    assert EXTENSION_NAME == "permessage-deflate"


def test_client_offer_default() -> None:
    """RFC 7692 §7.1.2.2: offer client_max_window_bits so the server may limit us."""
    assert client_offer(DeflateConfig()) == [("client_max_window_bits", None)]


def test_client_offer_every_parameter() -> None:
    """RFC 7692 §7.1.1.1, §7.1.1.2, §7.1.2.1, §7.1.2.2 in one offer."""
    config = DeflateConfig(
        True, True, server_max_window_bits=10, client_max_window_bits=11
    )
    assert client_offer(config) == [
        ("server_no_context_takeover", None),
        ("client_no_context_takeover", None),
        ("server_max_window_bits", "10"),
        ("client_max_window_bits", "11"),
    ]


@pytest.mark.parametrize(
    ("response", "agreed"),
    [
        ([], params()),
        ([("server_no_context_takeover", None)], params(snct=True)),  # §7.1.1.1
        ([("client_no_context_takeover", None)], params(cnct=True)),  # §7.1.1.2
        ([("server_max_window_bits", "8")], params(sbits=8)),  # §7.1.2.1, unasked
        ([("server_max_window_bits", "15")], params()),
        ([("client_max_window_bits", "9")], params(cbits=9)),  # §7.1.2.2
        (
            [
                ("client_max_window_bits", "12"),
                ("server_max_window_bits", "12"),
                ("client_no_context_takeover", None),
                ("server_no_context_takeover", None),
            ],
            params(True, True, 12, 12),
        ),
    ],
)
def test_client_accepts_7_1(response: ExtensionParams, agreed: DeflateParams) -> None:
    """RFC 7692 §7.1: what a server may answer to the default offer."""
    assert client_accept(DeflateConfig(), response) == agreed


def test_client_keeps_its_no_context_takeover_hint_7_1_1_2() -> None:
    """RFC 7692 §7.1.1.2: our hint binds us even if the server ignores it."""
    config = DeflateConfig(client_no_context_takeover=True)
    assert client_accept(config, []) == params(cnct=True)


def test_client_requires_server_no_context_takeover_it_asked_7_1_1_1() -> None:
    """RFC 7692 §7.1.1.1: accepting the offer means echoing the parameter."""
    config = DeflateConfig(server_no_context_takeover=True)
    assert client_accept(config, [("server_no_context_takeover", None)]) == params(
        snct=True
    )
    with pytest.raises(InvalidHandshake, match="server_no_context_takeover"):
        client_accept(config, [])


@pytest.mark.parametrize(("value", "ok"), [("9", True), ("10", True), ("11", False)])
def test_client_checks_server_max_window_bits_it_asked_7_1_2_1(
    value: str, ok: bool
) -> None:
    """RFC 7692 §7.1.2.1: the server answers with the same or a smaller value."""
    config = DeflateConfig(server_max_window_bits=10)
    response: ExtensionParams = [("server_max_window_bits", value)]
    if ok:
        assert client_accept(config, response) == params(sbits=int(value))
    else:
        with pytest.raises(InvalidHandshake, match="server_max_window_bits"):
            client_accept(config, response)


def test_client_requires_server_max_window_bits_it_asked_7_1_2_1() -> None:
    """RFC 7692 §7.1.2.1: a server accepting the limit must state it."""
    with pytest.raises(InvalidHandshake, match="server_max_window_bits"):
        client_accept(DeflateConfig(server_max_window_bits=10), [])


def test_client_checks_client_max_window_bits_against_its_offer_7_1_2_2() -> None:
    """RFC 7692 §7.1.2.2: the server may lower our value, never raise it."""
    config = DeflateConfig(client_max_window_bits=10)
    assert client_accept(config, []) == params(cbits=10)  # we keep our word
    assert client_accept(config, [("client_max_window_bits", "9")]) == params(cbits=9)
    with pytest.raises(InvalidHandshake, match="client_max_window_bits=11"):
        client_accept(config, [("client_max_window_bits", "11")])


def one(name: str, value: str | None) -> ExtensionParams:
    return [(name, value)]


INVALID_PARAMS: list[tuple[ExtensionParams, str]] = [
    ([("foo", None)], "unknown parameter 'foo'"),
    ([("Server_No_Context_Takeover", None)], "unknown"),
    ([("server_no_context_takeover", None)] * 2, "duplicate"),
    ([("client_no_context_takeover", None)] * 2, "duplicate"),
    ([("server_max_window_bits", "10"), ("server_max_window_bits", "10")], "duplicate"),
    ([("client_max_window_bits", "10"), ("client_max_window_bits", "10")], "duplicate"),
    ([("server_no_context_takeover", "1")], "takes no value"),
    ([("client_no_context_takeover", "")], "takes no value"),
    ([("server_max_window_bits", None)], "needs a value"),
    *[
        (one(name, value), "without leading zeros")
        for name in ("server_max_window_bits", "client_max_window_bits")
        for value in ("7", "16", "0", "abc", "08", "010", "", "+9", " 9", "9.0", "١٢")
    ],
]


@pytest.mark.parametrize(("response", "reason"), INVALID_PARAMS)
def test_client_fails_on_invalid_response_7(
    response: ExtensionParams, reason: str
) -> None:
    """RFC 7692 §7: unknown, duplicate or invalid parameters fail the connection."""
    with pytest.raises(InvalidHandshake, match=reason) as info:
        client_accept(DeflateConfig(), response)
    assert response[0][0] in str(info.value)  # the message names the parameter


def test_client_fails_on_client_max_window_bits_without_value_7_1_2_2() -> None:
    """RFC 7692 §7.1.2.2: only an offer may omit client_max_window_bits' value."""
    with pytest.raises(InvalidHandshake, match="client_max_window_bits needs a value"):
        client_accept(DeflateConfig(), [("client_max_window_bits", None)])


# -- Negotiation: the server's side -------------------------------------------


def accept(
    offers: list[ExtensionParams], **config: Any
) -> tuple[DeflateParams, ExtensionParams] | None:
    return server_accept(DeflateConfig(**config), offers)


def test_server_default_with_bare_offer() -> None:
    """RFC 7692 §7.1.2.1: we announce our 12-bit window even unasked."""
    assert accept([[]]) == (params(sbits=12), [("server_max_window_bits", "12")])


def test_server_default_with_browser_offer_7_1_2_2() -> None:
    """RFC 7692 §7.1.2.2: an offer without value lets us limit the client."""
    assert accept([[("client_max_window_bits", None)]]) == (
        params(sbits=12, cbits=12),
        [("server_max_window_bits", "12"), ("client_max_window_bits", "12")],
    )


@pytest.mark.parametrize(
    ("offer", "config", "agreed", "response"),
    [
        # §7.1.1.1: asked for, or chosen by us.
        (
            [("server_no_context_takeover", None)],
            {},
            params(snct=True, sbits=12),
            [("server_no_context_takeover", None), ("server_max_window_bits", "12")],
        ),
        (
            [],
            {"server_no_context_takeover": True, "server_max_window_bits": 15},
            params(snct=True),
            [("server_no_context_takeover", None)],
        ),
        # §7.1.1.2: the client's hint is echoed; or we impose it.
        (
            [("client_no_context_takeover", None)],
            {"server_max_window_bits": 15},
            params(cnct=True),
            [("client_no_context_takeover", None)],
        ),
        (
            [],
            {"client_no_context_takeover": True, "server_max_window_bits": 15},
            params(cnct=True),
            [("client_no_context_takeover", None)],
        ),
        # §7.1.2.1: the same or a smaller value than asked; ours if smaller.
        (
            [("server_max_window_bits", "10")],
            {},
            params(sbits=10),
            [("server_max_window_bits", "10")],
        ),
        (
            [("server_max_window_bits", "14")],
            {},
            params(sbits=12),
            [("server_max_window_bits", "12")],
        ),
        (
            [("server_max_window_bits", "14")],
            {"server_max_window_bits": 15},
            params(sbits=14),
            [("server_max_window_bits", "14")],
        ),
        (
            [("server_max_window_bits", "15")],
            {"server_max_window_bits": 15},
            params(),
            [("server_max_window_bits", "15")],  # asked, so answered
        ),
        ([], {"server_max_window_bits": 15}, params(), []),
        (
            [],
            {"server_max_window_bits": 8},
            params(sbits=8),
            [("server_max_window_bits", "8")],
        ),
        # §7.1.2.2: at most the client's value; ours if smaller.
        (
            [("client_max_window_bits", "10")],
            {"server_max_window_bits": 15},
            params(cbits=10),
            [("client_max_window_bits", "10")],
        ),
        (
            [("client_max_window_bits", "14")],
            {"server_max_window_bits": 15},
            params(cbits=12),
            [("client_max_window_bits", "12")],
        ),
        (
            [("client_max_window_bits", None)],
            {"server_max_window_bits": 15, "client_max_window_bits": 15},
            params(),
            [],
        ),
        (
            [("client_max_window_bits", None)],
            {"server_max_window_bits": 15, "client_max_window_bits": 9},
            params(cbits=9),
            [("client_max_window_bits", "9")],
        ),
        (
            [],  # 15 needs no limit, so the offer needn't allow one
            {"server_max_window_bits": 15, "client_max_window_bits": 15},
            params(),
            [],
        ),
    ],
)
def test_server_accepts_7_1(
    offer: ExtensionParams,
    config: dict[str, int | bool],
    agreed: DeflateParams,
    response: ExtensionParams,
) -> None:
    """RFC 7692 §7.1.1 and §7.1.2: each parameter, with and without value."""
    assert accept([offer], **config) == (agreed, response)


def test_server_declines_offer_that_wont_let_it_limit_the_client_7_1_2_2() -> None:
    """RFC 7692 §7.1.2.2: without the parameter we may not limit the client."""
    assert accept([[]], client_max_window_bits=10) is None
    assert accept(
        [[], [("client_max_window_bits", None)]], client_max_window_bits=10
    ) == (
        params(sbits=12, cbits=10),
        [("server_max_window_bits", "12"), ("client_max_window_bits", "10")],
    )


@pytest.mark.parametrize(("offer", "reason"), INVALID_PARAMS)
def test_server_declines_invalid_offer_and_takes_the_next_5(
    offer: ExtensionParams, reason: str
) -> None:
    """RFC 7692 §5 and §7: decline an invalid offer; it doesn't fail the handshake."""
    assert accept([offer]) is None
    assert accept([offer, [("server_max_window_bits", "9")]]) == (
        params(sbits=9),
        [("server_max_window_bits", "9")],
    )


def test_server_accepts_client_max_window_bits_without_value_in_offer_7_1_2_2() -> None:
    """RFC 7692 §7.1.2.2: in an offer the parameter may have no value."""
    assert accept([[("client_max_window_bits", None)]]) is not None


def test_server_takes_the_first_acceptable_offer_7_1_3() -> None:
    """RFC 7692 §7.1.3: the offer with a fallback, in preference order."""
    offers: list[ExtensionParams] = [
        [("client_max_window_bits", None), ("server_max_window_bits", "10")],
        [("client_max_window_bits", None)],
    ]
    assert accept(offers) == (
        params(sbits=10, cbits=12),
        [("server_max_window_bits", "10"), ("client_max_window_bits", "12")],
    )


def test_server_with_no_offer() -> None:
    assert accept([]) is None


configs = st.builds(
    DeflateConfig,
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(8, 15),
    st.none() | st.integers(8, 15),
)


@given(client=configs, server=configs)
def test_both_sides_agree_7_1(client: DeflateConfig, server: DeflateConfig) -> None:
    """RFC 7692 §7.1: whatever the configs, both ends derive the same parameters."""
    accepted = server_accept(server, [client_offer(client)])
    # Our client always allows a limit, and our server honours any request.
    assert accepted is not None
    agreed, response = accepted
    assert client_accept(client, response) == agreed


# -- DeflateConfig ------------------------------------------------------------


def test_config_defaults() -> None:
    assert DeflateConfig() == DeflateConfig(False, False, None, None, 6, 5, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 7},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"compress_level": 10},
        {"compress_level": -2},
        {"mem_level": 0},
        {"mem_level": 10},
        {"min_size": -1},
    ],
)
def test_config_rejects_out_of_range(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DeflateConfig(**kwargs)


def test_state_exposes_params_and_config() -> None:
    config = DeflateConfig(min_size=0)
    state = PerMessageDeflate(FULL, is_client=True, config=config)
    assert (state.params, state.config, state.is_client) == (FULL, config, True)
    assert PerMessageDeflate(FULL, is_client=False).config == DeflateConfig()


# -- Round trips --------------------------------------------------------------

MESSAGES = [sample(seed, size) for seed, size in enumerate([0, 1, 100, 3000, 40_000])]
MESSAGES += [MESSAGES[3], MESSAGES[4][1000:], bytes(range(256)) * 4]


@pytest.mark.parametrize(
    ("snct", "cnct"), list(itertools.product([False, True], repeat=2))
)
@pytest.mark.parametrize("bits", range(8, 16))
def test_round_trip_every_parameter_combination_7_2(
    snct: bool, cnct: bool, bits: int
) -> None:
    """RFC 7692 §7.2: each context takeover setting and window size, both ways.

    The messages repeat each other at distances within and beyond the window,
    across messages and frames, where a window mismatch fails to inflate.
    """
    for sbits, cbits in [(bits, bits), (bits, 23 - bits)]:
        client, server = pair(params(snct, cnct, sbits, cbits))
        for i, message in enumerate(MESSAGES):
            cuts = [len(message) // 3] if i % 2 else []
            assert receive(server, send(client, message, cuts)) == message
            assert receive(client, send(server, message, cuts)) == message


def test_eight_bit_window_stays_within_256_bytes_7_1_2() -> None:
    """RFC 7692 §7.1.2.1: 8 bits agreed; zlib compresses with 9, yet every
    distance fits a 256-byte window, checked by a strict 8-bit inflater."""
    _, server = pair(params(sbits=8))
    strict = zlib.decompressobj(-8)
    for seed in range(30):
        message = sample(seed, 5000)
        frames = send(server, message, [1000, 2500])
        frames[-1] += b"\x00\x00\xff\xff"
        assert b"".join(strict.decompress(frame) for frame in frames) == message


def test_receiver_uses_the_agreed_window_7_2_2() -> None:
    """RFC 7692 §7.2.2: data using a larger window than agreed doesn't inflate."""
    message = sample(1, 4000)
    _, wide = pair(params(sbits=15))
    narrow, _ = pair(params(sbits=9))
    narrow.decompress(wide.compress(message), True, None)
    with pytest.raises(ProtocolError, match="too far back"):
        narrow.decompress(wide.compress(message), True, None)


def test_receiver_resets_when_the_peer_has_no_context_takeover_7_2_2() -> None:
    """RFC 7692 §7.2.2: after server_no_context_takeover the window is empty."""
    _, server = pair(FULL)
    client, _ = pair(params(snct=True))
    assert client.decompress(server.compress(b"Hello"), True, None) == b"Hello"
    with pytest.raises(ProtocolError):
        client.decompress(server.compress(b"Hello"), True, None)


def test_sender_resets_with_no_context_takeover_7_2_1() -> None:
    """RFC 7692 §7.2.1: each message compresses as if it were the first."""
    message = sample(3, 2000)
    client, _ = pair(params(cnct=True))
    frames = [send(client, message, [700]) for _ in range(3)]
    assert frames[0] == frames[1] == frames[2]
    _, server = pair(FULL)  # and the takeover peer still inflates them
    assert [receive(server, f) for f in frames] == [message] * 3


messages = st.lists(
    st.binary(max_size=3000)
    | st.lists(
        st.sampled_from([b"{", b'"id":', b"1234", b"hello", bytes(40)]), max_size=300
    ).map(b"".join),
    max_size=8,
)
agreements = st.builds(
    DeflateParams, st.booleans(), st.booleans(), st.integers(8, 15), st.integers(8, 15)
)


def cuts_for(data: st.DataObject, size: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, size), max_size=4))


@settings(deadline=None)
@given(agreed=agreements, batch=messages, data=st.data())
def test_round_trip_any_messages_any_fragmentation(
    agreed: DeflateParams, batch: list[bytes], data: st.DataObject
) -> None:
    """RFC 7692 §7.2: decompress(compress(m)) == m, however the frames fall."""
    client, server = pair(agreed)
    for i, message in enumerate(batch):
        sender, receiver = (client, server) if i % 2 else (server, client)
        frames = send(sender, message, cuts_for(data, len(message)))
        # Inflation is streaming: the receiver may see other frame boundaries.
        stream = b"".join(frames)
        bounds = [0, *sorted(cuts_for(data, len(stream))), len(stream)]
        pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
        assert receive(receiver, pieces) == message


# -- Bounded decompression (RFC 6455 §10.4 limits) -----------------------------


def peak_memory(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    except PayloadTooBig:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    """A message inflating to 1 GiB of zeros, built a MiB at a time.

    Each MiB is fully flushed, so its compressed form stands alone and is the
    same every time: compressing one segment stands for compressing all.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    zeros = bytes(MiB)
    segment = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH) == segment
    inflated = zlib.decompressobj(-15).decompress(segment * 3)
    assert inflated == bytes(3 * MiB)
    return segment * 1024


def test_gigabyte_bomb_stops_at_the_limit(gigabyte_bomb: bytes) -> None:
    """A ~1 MiB message that would inflate to 1 GiB: PayloadTooBig, small peak."""
    assert len(gigabyte_bomb) < 1.1 * MiB
    client, _ = pair(FULL)
    with pytest.raises(PayloadTooBig) as info:
        client.decompress(gigabyte_bomb, True, MiB)
    assert info.value.code == 1009
    client, _ = pair(FULL)
    assert peak_memory(lambda: client.decompress(gigabyte_bomb, True, MiB)) < 8 * MiB


def test_kilobyte_bomb_stops_at_the_limit() -> None:
    """1 KiB inflating to 1 MiB, with 64 KiB allowed: little more is allocated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    bomb = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 1100
    client, _ = pair(FULL)
    peak = peak_memory(lambda: client.decompress(bomb, True, 64 * KiB))
    assert peak < 256 * KiB
    with pytest.raises(PayloadTooBig):
        pair(FULL)[0].decompress(bomb, True, 64 * KiB)


def test_limit_is_exact() -> None:
    """max_size bytes pass; one more byte is too many, whole or fragmented."""
    message = sample(5, 10_000)
    _, server = pair(FULL)
    whole = server.compress(message)
    assert pair(FULL)[0].decompress(whole, True, len(message)) == message
    with pytest.raises(PayloadTooBig):
        pair(FULL)[0].decompress(whole, True, len(message) - 1)
    # The caller passes what is left of the budget with each frame.
    _, server = pair(FULL)
    frames = send(server, message, [4000])
    client, _ = pair(FULL)
    first = client.decompress(frames[0], False, len(message))
    assert len(first) == 4000
    assert client.decompress(frames[1], True, len(message) - 4000) == message[4000:]
    client, _ = pair(FULL)
    client.decompress(frames[0], False, len(message) - 1)
    with pytest.raises(PayloadTooBig):
        client.decompress(frames[1], True, len(message) - 1 - 4000)


def test_no_limit() -> None:
    client, server = pair(FULL)
    big = bytes(5 * MiB)
    assert client.decompress(server.compress(big), True, None) == big


# -- Invalid data -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff",  # reserved block type 11
        bytes.fromhex("0d"),  # a dynamic block with invalid code lengths
        bytes.fromhex("0005000000"),  # LEN and NLEN disagree
        bytes.fromhex("f20011"),  # a distance before the start of the stream
    ],
)
def test_invalid_data_is_a_protocol_error(data: bytes) -> None:
    """RFC 7692 §7.2.2 names no close code: 1002, the data breaks the extension."""
    client, _ = pair(FULL)
    with pytest.raises(ProtocolError, match="invalid permessage-deflate data") as info:
        client.decompress(data, True, None)
    assert info.value.code == 1002
    assert not isinstance(info.value, PayloadTooBig)


# -- Memory per connection ----------------------------------------------------


def retained_memory(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_state_is_created_lazily() -> None:
    """A new connection holds no zlib state; one that only receives, no compressor."""
    accepted = server_accept(DeflateConfig(), [client_offer(DeflateConfig())])
    assert accepted is not None
    agreed = accepted[0]
    message = sample(7, 500)
    frames = send(PerMessageDeflate(agreed, is_client=True), message)
    holder: list[PerMessageDeflate] = []

    def create() -> None:
        holder.append(PerMessageDeflate(agreed, is_client=False))

    assert retained_memory(create) < 1 * KiB
    server = holder[0]
    assert (
        retained_memory(lambda: receive(server, frames)) < 20 * KiB
    )  # 12-bit inflater
    # Compressor and decompressor of the default server: ~49 KiB, documented.
    assert retained_memory(lambda: server.compress(message)) < 48 * KiB


def test_no_context_takeover_frees_state_between_messages() -> None:
    client, server = pair(params(True, True, 15, 15))
    message = sample(8, 500)

    def exchange() -> None:
        receive(server, send(client, message))
        receive(client, send(server, message))

    assert retained_memory(exchange) < 2 * KiB


def test_spent_budget_still_bounds_inflation() -> None:
    """A negative budget must not read as zlib's "no limit" (max_length=0)."""
    client, _ = pair(FULL)
    with pytest.raises(PayloadTooBig):
        client.decompress(HELLO, True, -1)
    client, _ = pair(FULL)
    assert client.decompress(b"\x00", True, 0) == b""  # an empty message fits


def test_input_buffer_is_left_alone() -> None:
    client, _ = pair(FULL)
    frame = bytearray(HELLO)
    assert client.decompress(frame, True, None) == b"Hello"  # type: ignore[arg-type]
    assert frame == HELLO
