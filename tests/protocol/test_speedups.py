"""The compiled twins in tidings.protocol._speedups agree with the Python ones.

The pure-Python code in frames.py and utf8.py is the reference. Each test
here runs both twins on the same input and asks for the same result, or the
same exception with the same message, at the same step. The agreement tests
need the extension; they are skipped, saying why, where it was not built.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import itertools
import os
import random
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.exceptions import ProtocolError
from tidings.protocol import frames, speedups, utf8
from tidings.protocol.frames import RSV1, FrameParser, Opcode, RawFrame, serialize_frame

from .reading import BOUNDARIES, message_wire, receive_steps

_speedups: ModuleType | None
try:
    from tidings.protocol import _speedups
except ImportError:  # pragma: no cover - depends on the install
    _speedups = None

if _speedups is not None and not speedups.ACTIVE:
    # TIDINGS_NO_SPEEDUPS is set: nothing was swapped in, but the agreement
    # tests still compare the C glue in frames.py with the reference.
    frames._speedups = _speedups  # type: ignore[attr-defined]

needs_c = pytest.mark.skipif(
    _speedups is None,
    reason="tidings.protocol._speedups was not built (no C compiler at install "
    "time?); run `pip install -e .` with a compiler to test the C twins",
)


def c() -> ModuleType:
    assert _speedups is not None
    return _speedups


# -- which implementation is in use -------------------------------------------


def test_implementation_names_the_twins_in_use() -> None:
    assert speedups.implementation() == ("C" if speedups.ACTIVE else "Python")
    if speedups.ACTIVE:
        assert frames.apply_mask is c().apply_mask
        assert frames.build_frame is c().build_frame
        assert frames.parse_messages is c().parse_messages
        assert FrameParser.next_raw is frames._c_next_raw
        assert utf8.utf8_check is c().utf8_check
        assert isinstance(utf8.Utf8Decoder()._decoder, c().Utf8IncrementalDecoder)
    else:
        assert frames.apply_mask is frames._py_apply_mask
        assert frames.build_frame is frames._py_build_frame
        assert frames.parse_messages is frames._py_parse_messages
        assert FrameParser.next_raw is frames._py_next_raw
        assert utf8.utf8_check is utf8._py_utf8_check


def _implementation_in_subprocess(no_speedups: str | None) -> str:
    env = dict(os.environ)
    env.pop("TIDINGS_NO_SPEEDUPS", None)
    if no_speedups is not None:
        env["TIDINGS_NO_SPEEDUPS"] = no_speedups
    code = (
        "import tidings.protocol, tidings.protocol.frames as f; "
        "from tidings.protocol.speedups import implementation; "
        "assert (f.apply_mask is f._py_apply_mask) == (implementation() == 'Python'); "
        "print(implementation())"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_tidings_no_speedups_forces_the_python_twins() -> None:
    assert _implementation_in_subprocess("1") == "Python"
    expected = "C" if _speedups is not None else "Python"
    assert _implementation_in_subprocess(None) == expected
    assert _implementation_in_subprocess("0") == expected
    assert _implementation_in_subprocess("") == expected


def _c_compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return shutil.which(words[0]) if words else None


def test_the_extension_is_built_where_a_compiler_exists() -> None:
    # CI has gcc: a C file that no longer compiles must fail CI, not quietly
    # leave everyone on the Python twins.
    if _c_compiler() is None:
        pytest.skip("no C compiler here: the pure-Python twins are expected")
    assert importlib.util.find_spec("tidings.protocol._speedups") is not None, (
        "tidings.protocol._speedups is not built: run `pip install -e .` and "
        "read the compiler's output"
    )


# -- apply_mask ---------------------------------------------------------------


@needs_c
@given(
    data=st.binary(max_size=300) | st.binary(min_size=1000, max_size=5000),
    mask=st.binary(min_size=4, max_size=4),
    start=st.integers(0, 40),
    stop=st.integers(0, 40),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview", "strided"]),
)
def test_apply_mask_twins_agree(
    data: bytes, mask: bytes, start: int, stop: int, kind: str
) -> None:
    view = memoryview(data)[start : len(data) - stop]  # unaligned slices too
    arg: bytes | bytearray | memoryview
    if kind == "bytes":
        arg = bytes(view)
    elif kind == "bytearray":
        arg = bytearray(view)
    elif kind == "memoryview":
        arg = view
    else:
        arg = view[::3]  # not contiguous
    expected = frames._py_apply_mask(arg, mask)
    assert c().apply_mask(arg, mask) == expected
    assert c().apply_mask(arg, bytearray(mask)) == expected


@needs_c
def test_apply_mask_needs_a_4_byte_mask() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        c().apply_mask(b"data", b"abc")
    with pytest.raises(TypeError):
        c().apply_mask("text", b"abcd")


@needs_c
def test_apply_mask_on_large_buffers() -> None:
    data = bytes(range(256)) * 4099 + b"tail"  # over the no-GIL threshold
    mask = b"\x01\x80\xff\x10"
    assert c().apply_mask(data, mask) == frames._py_apply_mask(data, mask)


# -- build_frame ----------------------------------------------------------------


@needs_c
@given(
    opcode=st.sampled_from(list(Opcode)),
    # Each length encoding and its edges: 7-bit, 16-bit and 64-bit.
    size=st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70001]),
    flags=st.tuples(st.booleans(), st.booleans()),
    mask=st.none() | st.binary(min_size=4, max_size=4),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview", "strided"]),
)
def test_build_frame_twins_agree(
    opcode: Opcode,
    size: int,
    flags: tuple[bool, bool],
    mask: bytes | None,
    kind: str,
) -> None:
    fin, rsv1 = flags
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    arg: bytes | bytearray | memoryview
    if kind == "bytes":
        arg = data
    elif kind == "bytearray":
        arg = bytearray(data)
    elif kind == "memoryview":
        arg = memoryview(data)
    else:
        arg = memoryview(data + data)[::2]  # not contiguous
    expected = frames._py_build_frame(opcode, arg, fin, rsv1, mask)
    assert c().build_frame(opcode, arg, fin, rsv1, mask) == expected
    if opcode in frames.DATA_OPCODES:  # control frames have rules of their own
        # What a parser reads back is what was framed.
        parser = FrameParser(expect_mask=mask is not None)
        parser.rsv_allowed = RSV1
        parser.feed(expected)
        assert parser.next_raw() == (opcode, bytes(arg), fin, rsv1)


@needs_c
def test_build_frame_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        c().build_frame(Opcode.TEXT, b"data", True, False, b"abc")
    with pytest.raises(ValueError, match="opcode"):
        c().build_frame(16, b"data", True, False, None)
    with pytest.raises(TypeError):
        c().build_frame(Opcode.TEXT, "text", True, False, None)
    with pytest.raises(TypeError):
        c().build_frame(Opcode.TEXT, b"data", True, False)


# -- payloads received in place ------------------------------------------------


@needs_c
@given(
    # Past the no-GIL threshold too, without drawing 64 KiB of entropy.
    data=st.binary(max_size=300)
    | st.binary(min_size=1, max_size=64).map(lambda b: b * (70_000 // len(b) + 1)),
    mask=st.none() | st.binary(min_size=4, max_size=4),
    cuts=st.lists(st.integers(0, 70_100), max_size=4),
)
def test_payload_buffer_twins_agree(
    data: bytes, mask: bytes | None, cuts: list[int]
) -> None:
    results = []
    for make, finish in (
        (c().payload_buffer, c().finish_payload),
        (frames._py_payload_buffer, frames._py_finish_payload),
    ):
        payload, view = make(len(data))
        assert len(view) == len(data) and not view.readonly
        # Written piece by piece, as reads arrive.
        bounds = sorted({0, len(data), *(x for x in cuts if x < len(data))})
        for lo, hi in itertools.pairwise(bounds):
            view[lo:hi] = data[lo:hi]
        results.append(finish(payload, mask))
    assert type(results[0]) is bytes and type(results[1]) is bytes
    assert results[0] == results[1]
    assert results[1] == (data if mask is None else frames._py_apply_mask(data, mask))


@needs_c
def test_finish_payload_refuses_what_payload_buffer_did_not_make() -> None:
    with pytest.raises(TypeError):
        c().finish_payload(bytearray(8), None)
    payload, _ = c().payload_buffer(8)
    with pytest.raises(ValueError, match="4 bytes"):
        c().finish_payload(payload, b"abc")
    with pytest.raises(ValueError):
        c().payload_buffer(-1)


@needs_c
@given(
    data=st.binary(min_size=1, max_size=300)
    | st.binary(min_size=1, max_size=64).map(lambda b: b * (140_000 // len(b) + 1)),
    mask=st.none() | st.binary(min_size=4, max_size=4),
    steps=st.lists(st.integers(1, 140_000), max_size=4),
    first=st.integers(1, 140_000),
)
def test_grow_payload_twins_agree(
    data: bytes, mask: bytes | None, steps: list[int], first: int
) -> None:
    # A buffer made small, filled, grown, filled... as FrameParser does.
    sizes = sorted({min(x, len(data)) for x in [first, *steps]} | {len(data)})
    results = []
    for make, grow, finish in (
        (c().payload_buffer, c().grow_payload, c().finish_payload),
        (frames._py_payload_buffer, frames._py_grow_payload, frames._py_finish_payload),
    ):
        payload, view = make(sizes[0])
        view[:] = data[: sizes[0]]
        for filled, size in itertools.pairwise(sizes):
            payload, view = grow(payload, filled, size)
            assert len(view) == size and not view.readonly
            assert bytes(view[:filled]) == data[:filled]
            view[filled:] = data[filled:size]
        results.append(finish(payload, mask))
    assert type(results[0]) is bytes and type(results[1]) is bytes
    assert results[0] == results[1]
    assert results[1] == (data if mask is None else frames._py_apply_mask(data, mask))


@needs_c
@pytest.mark.parametrize(
    ("filled", "size"), [(-1, 8), (9, 16), (8, 7), (0, -1), (2**70, 8)]
)
def test_grow_payload_twins_refuse_the_same_bounds(filled: int, size: int) -> None:
    errors = []
    for make, grow in (
        (c().payload_buffer, c().grow_payload),
        (frames._py_payload_buffer, frames._py_grow_payload),
    ):
        payload, _ = make(8)
        with pytest.raises((ValueError, OverflowError)) as info:
            grow(payload, filled, size)
        errors.append((type(info.value), str(info.value)))
    if errors[0][0] is ValueError:  # Python ints never overflow
        assert errors[0] == errors[1]
    with pytest.raises(TypeError):
        c().grow_payload(bytearray(8), 0, 16)


# -- UTF-8 --------------------------------------------------------------------

# Text, with now and then a byte that breaks it: most splits land inside
# multi-byte code points, and invalid sequences come in every shape.
utf8ish = st.lists(
    st.text(max_size=20).map(str.encode)
    | st.binary(max_size=4)
    | st.sampled_from(
        [
            b"\xed\xa0",
            b"\xed\xa0\x80",
            b"\xed\x9f\xbf",
            b"\xf4\x90",
            b"\xf4\x8f",
            b"\xe0\x9f",
            b"\xe0\xa0",
            b"\xf0\x8f",
            b"\xf0\x90",
            b"\xc0\xaf",
            b"\xc2",
            b"\xe1\x80",
            b"\xf1\x80\x80",
            b"\xff",
            b"\x80",
        ]
    ),
    max_size=12,
).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode_steps(decoder: Any, fragments: list[bytes], final: bool) -> list[object]:
    """Each fragment's text and the decoder's state after it, up to an error."""
    steps: list[object] = []
    for i, fragment in enumerate(fragments):
        last = final and i == len(fragments) - 1
        try:
            text = decoder.decode(fragment, last)
        except UnicodeDecodeError as exc:
            steps.append(("error", exc.reason))
            break
        steps.append((text, decoder.getstate()))
    return steps


@needs_c
@given(utf8ish, st.lists(st.integers(0, 120), max_size=10), st.booleans())
def test_incremental_decoder_twins_agree(
    data: bytes, cuts: list[int], final: bool
) -> None:
    fragments = [*split(data, cuts), b""]
    reference = codecs.getincrementaldecoder("utf-8")()
    compiled = c().Utf8IncrementalDecoder()
    assert decode_steps(compiled, fragments, final) == decode_steps(
        reference, fragments, final
    )


@needs_c
@given(utf8ish, utf8ish)
def test_incremental_decoder_state_round_trips(first: bytes, rest: bytes) -> None:
    # Utf8Decoder.copy() goes through getstate() and setstate().
    reference = codecs.getincrementaldecoder("utf-8")()
    compiled = c().Utf8IncrementalDecoder()
    try:
        reference.decode(first, False)
    except UnicodeDecodeError:
        return
    compiled.setstate(reference.getstate())
    assert decode_steps(compiled, [rest], True) == decode_steps(reference, [rest], True)


@needs_c
@given(utf8ish, st.lists(st.integers(0, 120), max_size=10))
def test_utf8_decoder_fails_at_the_same_fragment_with_either_twin(
    data: bytes, cuts: list[int]
) -> None:
    def run(make: Callable[[], object]) -> list[object]:
        decoder = utf8.Utf8Decoder()
        decoder._decoder = make()  # type: ignore[assignment]
        fragments = split(data, cuts)
        steps: list[object] = []
        for i, fragment in enumerate(fragments):
            try:
                steps.append(decoder.decode(fragment, i == len(fragments) - 1))
            except ProtocolError as exc:
                steps.append((exc.code, str(exc)))
                break
        return steps

    assert run(c().Utf8IncrementalDecoder) == run(utf8._PyIncrementalDecoder)


@needs_c
@given(utf8ish, st.lists(st.integers(0, 120), max_size=10))
def test_utf8_check_twins_agree_fragment_by_fragment(
    data: bytes, cuts: list[int]
) -> None:
    compiled = reference = utf8.UTF8_ACCEPT
    for fragment in split(data, cuts):
        compiled = c().utf8_check(fragment, compiled)
        reference = utf8._py_utf8_check(fragment, reference)
        assert compiled == reference


@needs_c
@given(utf8ish, st.lists(st.integers(0, 120), max_size=10))
def test_utf8_check_rejects_where_the_decoder_fails(
    data: bytes, cuts: list[int]
) -> None:
    # Against CPython's decoder itself: the same fragment fails, and a message
    # is valid exactly when it ends in the accept state.
    decoder = codecs.getincrementaldecoder("utf-8")()
    state = utf8.UTF8_ACCEPT
    for fragment in split(data, cuts):
        state = c().utf8_check(fragment, state)
        try:
            decoder.decode(fragment, False)
        except UnicodeDecodeError:
            assert state == utf8.UTF8_REJECT
            return
        assert state != utf8.UTF8_REJECT
    try:
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        assert state != utf8.UTF8_ACCEPT
    else:
        assert state == utf8.UTF8_ACCEPT


@needs_c
def test_utf8_check_twins_agree_on_every_byte_pair_from_every_state() -> None:
    # Bytes below 0x70 behave as 0x70..0x7F do (ASCII).
    states = [utf8.UTF8_REJECT, *range(9)]
    pairs = [bytes([a, b]) for a in range(0x70, 0x100) for b in range(0x70, 0x100)]
    singles = [bytes([a]) for a in range(0x100)]
    mismatches = [
        (state, data)
        for state in states
        for data in singles + (pairs if state >= 0 else [])
        if c().utf8_check(data, state) != utf8._py_utf8_check(data, state)
    ]
    assert mismatches == []


@needs_c
def test_utf8_check_defers_a_split_surrogate_as_cpython_does() -> None:
    # CPython keeps ED A0..BF at the end of a non-final input and fails with
    # the next byte; the twins do the same (see docs/speedups.md).
    state = c().utf8_check(b"ok\xed\xa0")
    assert state not in (utf8.UTF8_ACCEPT, utf8.UTF8_REJECT)
    assert c().utf8_check(b"", state) == state
    assert c().utf8_check(b"\x80", state) == utf8.UTF8_REJECT
    assert c().utf8_check(b"\xf4\x90") == utf8.UTF8_REJECT  # fails at once


# -- frame parsing ------------------------------------------------------------


@st.composite
def wire_bytes(draw: st.DrawFn) -> bytes:
    """Frames valid and broken, with random bytes between them."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["frame", "frame", "frame", "header", "junk"]))
        if kind == "frame":
            payload = draw(
                st.binary(max_size=140)
                | st.sampled_from(BOUNDARIES).map(bytes)
                | st.integers(120, 70_000).map(bytes)
            )
            parts.append(
                serialize_frame(
                    draw(st.integers(0, 15)),
                    payload,
                    fin=draw(st.booleans()),
                    rsv1=draw(st.booleans()),
                    mask=draw(st.booleans()),
                )
            )
        elif kind == "header":
            b1 = draw(st.sampled_from([0, 5, 125, 126, 127])) | draw(
                st.sampled_from([0, 0x80])
            )
            parts.append(bytes([draw(st.integers(0, 255)), b1]))
            if b1 & 0x7F == 126:
                parts.append(draw(st.integers(0, 0xFFFF)).to_bytes(2, "big"))
            elif b1 & 0x7F == 127:
                parts.append(
                    draw(st.integers(0, 2**64 - 1) | st.integers(0, 300)).to_bytes(
                        8, "big"
                    )
                )
        else:
            parts.append(draw(st.binary(max_size=12)))
    return b"".join(parts)


@needs_c
@settings(max_examples=300)
@given(
    data=st.data(),
    expect_mask=st.booleans(),
    max_payload=st.none() | st.sampled_from(BOUNDARIES) | st.integers(-1, 70),
)
def test_parse_messages_twins_agree(
    data: st.DataObject, expect_mask: bool, max_payload: int | None
) -> None:
    wire = data.draw(message_wire(expect_mask))
    expected = frames._py_parse_messages(wire, expect_mask, max_payload)
    assert c().parse_messages(wire, expect_mask, max_payload) == expected
    assert c().parse_messages(memoryview(wire), expect_mask, max_payload) == expected
    if expected is not None:
        # The messages are what the frame parser gives, frame by frame.
        parser = FrameParser(expect_mask=expect_mask)
        parser.feed(wire)
        whole = []
        while (frame := frames._py_next_raw(parser)) is not None:
            opcode, payload, _, _ = frame
            whole.append(payload.decode() if opcode is Opcode.TEXT else payload)
        assert whole == expected


@needs_c
@given(wire=wire_bytes(), expect_mask=st.booleans())
def test_parse_messages_twins_agree_on_anything(wire: bytes, expect_mask: bool) -> None:
    expected = frames._py_parse_messages(wire, expect_mask, None)
    assert c().parse_messages(wire, expect_mask, None) == expected


def parse_steps(
    next_raw: Callable[[FrameParser], RawFrame | None],
    chunks: list[bytes],
    expect_mask: bool,
    rsv_allowed: int,
    budgets: list[int | None],
) -> list[object]:
    """Every frame, None and exception the parser gives for these chunks."""
    parser = FrameParser(expect_mask=expect_mask)
    parser.rsv_allowed = rsv_allowed
    budget = itertools.cycle(budgets)
    steps: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            parser.max_payload = next(budget)
            try:
                frame = next_raw(parser)
            except ProtocolError as exc:
                steps.append((type(exc), exc.code, str(exc)))
                return steps
            steps.append(frame)
            if frame is None:
                break
    return steps


@needs_c
@given(
    wire=wire_bytes(),
    cuts=st.lists(st.integers(0, 80_000), max_size=8),
    expect_mask=st.booleans(),
    rsv_allowed=st.sampled_from([0, RSV1, 0x70, -1, 1 << 70]),
    budgets=st.lists(
        st.none()
        | st.sampled_from(BOUNDARIES)
        | st.integers(-2, 300)
        | st.integers(2**63 - 2, 2**64),
        min_size=1,
        max_size=4,
    ),
)
def test_frame_parser_twins_agree_in_any_chunking(
    wire: bytes,
    cuts: list[int],
    expect_mask: bool,
    rsv_allowed: int,
    budgets: list[int | None],
) -> None:
    chunks = split(wire, cuts)
    args = (chunks, expect_mask, rsv_allowed, budgets)
    assert parse_steps(frames._c_next_raw, *args) == parse_steps(
        frames._py_next_raw, *args
    )


FAILING_HEADERS = [
    bytes([0x83, 0x7F]),  # reserved opcode, before the length arrives
    bytes([0x81 | 0x30, 0x00]),  # RSV2 and RSV3
    bytes([0x09, 0x00]),  # fragmented ping
    bytes([0xC9, 0x00]),  # RSV1 on a ping
    bytes([0x89, 0x7E, 0x00, 0x7E]),  # 126-byte ping
    bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),  # 64-bit top bit
    bytes([0x82, 0x7F]) + (10**12).to_bytes(8, "big"),  # over max_payload
]


@needs_c
@pytest.mark.parametrize(
    ("wire", "expect_mask"),
    [
        *[(wire, False) for wire in FAILING_HEADERS],
        *[
            (wire[:1] + bytes([wire[1] | 0x80]) + wire[2:], True)
            for wire in FAILING_HEADERS
        ],
        (bytes([0x82, 0x85]), False),  # masked, to a client
        (bytes([0x82, 0x05]), True),  # unmasked, to a server
    ],
)
def test_frame_parser_twins_raise_the_same_errors(
    wire: bytes, expect_mask: bool
) -> None:
    args = ([wire], expect_mask, 0, [1000])
    c_steps = parse_steps(frames._c_next_raw, *args)
    assert c_steps == parse_steps(frames._py_next_raw, *args)
    assert isinstance(c_steps[-1], tuple)  # each of these fails


@needs_c
def test_frame_parser_twins_agree_on_a_stream_of_frames() -> None:
    wire = b"".join(
        serialize_frame(Opcode.BINARY, bytes([i & 0xFF]) * i, mask=True)
        for i in range(300)
    )
    args = ([wire[i : i + 7] for i in range(0, len(wire), 7)], True, 0, [None])
    steps = parse_steps(frames._c_next_raw, *args)
    assert steps == parse_steps(frames._py_next_raw, *args)
    assert sum(isinstance(step, tuple) for step in steps) == 300


@needs_c
@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536])
@pytest.mark.parametrize("over", [-1, 0, 1])
def test_frame_parser_twins_agree_at_the_payload_limit(length: int, over: int) -> None:
    wire = serialize_frame(Opcode.BINARY, bytes(max(length + over, 0)), mask=True)
    args = ([wire], True, 0, [length])
    steps = parse_steps(frames._c_next_raw, *args)
    assert steps == parse_steps(frames._py_next_raw, *args)
    assert isinstance(steps[-1], tuple) == (over > 0)


# The parser's twins: next_raw and the functions that hold a large payload.
_PAYLOAD_TWINS = ("payload_buffer", "grow_payload", "finish_payload")


@contextlib.contextmanager
def parser_twin(name: str) -> Iterator[None]:
    """Make FrameParser use the C or the Python twins while inside."""
    saved = FrameParser.next_raw, {n: getattr(frames, n) for n in _PAYLOAD_TWINS}
    source = c() if name == "C" else None
    FrameParser.next_raw = (  # type: ignore[method-assign]
        frames._c_next_raw if source is not None else frames._py_next_raw
    )
    for n in _PAYLOAD_TWINS:
        twin = getattr(source, n) if source is not None else getattr(frames, f"_py_{n}")
        setattr(frames, n, twin)
    try:
        yield
    finally:
        FrameParser.next_raw = saved[0]  # type: ignore[method-assign]
        for n, function in saved[1].items():
            setattr(frames, n, function)


@needs_c
@settings(max_examples=40)
@given(
    sizes=st.lists(
        st.sampled_from([65_535, 65_536, 262_144, 262_145, 1 << 20])
        | st.integers(65_536, 1_200_000)
        | st.integers(0, 300),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 2**32),
    chunks=st.lists(st.integers(1, 300_000), min_size=1, max_size=6),
    into=st.lists(st.booleans(), min_size=1, max_size=4),
    expect_mask=st.booleans(),
)
def test_frame_parser_twins_agree_on_large_frames_and_their_buffers(
    sizes: list[int],
    seed: int,
    chunks: list[int],
    into: list[bool],
    expect_mask: bool,
) -> None:
    rng = random.Random(seed)
    payloads = [rng.randbytes(n) for n in sizes]
    wire = b"".join(
        serialize_frame(Opcode.BINARY, p, mask=expect_mask) for p in payloads
    )
    args = (wire, chunks, into, expect_mask)
    with parser_twin("C"):
        compiled = receive_steps(*args)
    with parser_twin("Python"):
        reference = receive_steps(*args)
    # The same frames, and the same room offered at every step: both grow
    # their buffers at the same points, by the same rule.
    assert compiled == reference
    assert [s[1] for s in compiled if isinstance(s, tuple)] == payloads
