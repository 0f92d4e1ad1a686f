"""Parsing commands and encoding replies (tidings.hub.wire)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.hub.brokers.base import ClientInfo, HistoryResult, Publication
from tidings.hub.wire import (
    OPS,
    Command,
    CommandError,
    channel_users,
    encode_data,
    encode_error,
    encode_position,
    encode_pub,
    encode_push,
    encode_reply,
    parse_command,
    parse_since,
    valid_channel,
)


def test_a_full_command_parses() -> None:
    command = parse_command(
        json.dumps(
            {
                "id": 7,
                "op": "history",
                "channel": "chat:lobby",
                "since": {"offset": 3, "epoch": "e1"},
                "limit": 10,
            }
        )
    )
    assert command == Command(7, "history", "chat:lobby", since=(3, "e1"), limit=10)


def test_each_op_parses_with_its_fields() -> None:
    assert parse_command('{"id": 0, "op": "ping"}') == Command(0, "ping")
    assert parse_command('{"id": 1, "op": "connect", "token": "t"}').token == "t"
    assert parse_command('{"id": 1, "op": "connect", "token": null}').token is None
    publish = parse_command(
        '{"id": 2, "op": "publish", "channel": "a:b", "data": null}'
    )
    assert publish.data is None and publish.channel == "a:b"
    for op in ("subscribe", "unsubscribe", "presence", "history"):
        assert parse_command(json.dumps({"id": 3, "op": op, "channel": "a:"})).op == op
    rpc = parse_command('{"id": 4, "op": "rpc", "method": "m.x", "data": [1]}')
    assert (rpc.method, rpc.data) == ("m.x", [1])
    connect = parse_command(
        '{"id": 5, "op": "connect", "data": {"a": 1},'
        ' "subs": {"a:b": {"offset": 3, "epoch": "e"}}}'
    )
    assert connect.data == {"a": 1} and connect.subs == {"a:b": (3, "e")}


@pytest.mark.parametrize(
    ("text", "message", "id"),
    [
        ("", "invalid JSON", None),
        ("{", "invalid JSON", None),
        ("[" * 100_000, "invalid JSON", None),
        ("null", "a command must be a JSON object", None),
        ('"ping"', "a command must be a JSON object", None),
        ("{}", "a command needs an integer id", None),
        ('{"id": true, "op": "ping"}', "a command needs an integer id", None),
        ('{"id": 1.0, "op": "ping"}', "a command needs an integer id", None),
        (
            '{"id": 9007199254740992, "op": "ping"}',
            "a command needs an integer id",
            None,
        ),
        ('{"id": 1}', "missing op", 1),
        ('{"id": 1, "op": 5}', "missing op", 1),
        ('{"id": 1, "op": {"a": 1}}', "missing op", 1),
        ('{"id": 1, "op": "PING"}', "unknown op 'PING'", 1),
        ('{"id": 1, "op": "publish", "channel": "a:b"}', "publish needs data", 1),
        ('{"id": 1, "op": "subscribe", "channel": 5}', "a channel must be", 1),
        ('{"id": 1, "op": "subscribe"}', "a channel must be", 1),
        ('{"id": 1, "op": "subscribe", "channel": "ab"}', "NAMESPACE:NAME", 1),
        ('{"id": 1, "op": "subscribe", "channel": ":b"}', "NAMESPACE:NAME", 1),
        # Characters no namespace can have: never a 404 for a namespace.
        ('{"id": 1, "op": "subscribe", "channel": "a@b:c"}', "NAMESPACE:NAME", 1),
        (
            json.dumps({"id": 1, "op": "subscribe", "channel": "n" * 65 + ":c"}),
            "NAMESPACE:NAME",
            1,
        ),
        ('{"id": 1, "op": "subscribe", "channel": "a:b c"}', "after its namespace", 1),
        ('{"id": 1, "op": "subscribe", "channel": "a:b#"}', "after its namespace", 1),
        (
            json.dumps({"id": 1, "op": "subscribe", "channel": "a:" + "b" * 254}),
            "at most 255 characters",
            1,
        ),
        ('{"id": 1, "op": "connect", "token": 1}', "token must be a string", 1),
        ('{"id": 1, "op": "rpc"}', "rpc needs a method", 1),
        ('{"id": 1, "op": "rpc", "method": ""}', "rpc needs a method", 1),
        ('{"id": 1, "op": "rpc", "method": 3}', "rpc needs a method", 1),
        (json.dumps({"id": 1, "op": "rpc", "method": "m" * 256}), "rpc needs", 1),
        ('{"id": 1, "op": "connect", "subs": []}', "subs must be", 1),
        ('{"id": 1, "op": "connect", "subs": {"a:b": 3}}', "since must be", 1),
        (
            json.dumps(
                {"id": 1, "op": "connect", "subs": {f"a:{i}": {} for i in range(1025)}}
            ),
            "subs must be",
            1,
        ),
        ('{"id": 1, "op": "history", "channel": "a:b", "limit": -1}', "limit", 1),
        ('{"id": 1, "op": "history", "channel": "a:b", "limit": true}', "limit", 1),
        ('{"id": 1, "op": "history", "channel": "a:b", "since": []}', "since", 1),
    ],
)
def test_malformed_commands_raise_400_with_the_id_when_readable(
    text: str, message: str, id: int | None
) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert info.value.code == 400
    assert message in info.value.message
    assert info.value.id == id


@pytest.mark.parametrize(
    "value",
    [
        {"offset": 1},
        {"epoch": "e"},
        {"offset": -1, "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 1.5, "epoch": "e"},
        {"offset": 1, "epoch": 2},
        [1, "e"],
        "1:e",
    ],
)
def test_since_must_be_an_offset_and_an_epoch(value: Any) -> None:
    with pytest.raises(CommandError):
        parse_since(value)
    assert parse_since({"offset": 0, "epoch": ""}) == (0, "")


def publish_with_key(key: Any) -> str:
    return json.dumps(
        {"id": 1, "op": "publish", "channel": "a:b", "data": 1, "idempotency_key": key}
    )


@pytest.mark.parametrize(
    "key", ["", "k" * 65, 7, True, ["k"], {"k": 1}, "a\nb", "\x00", "\ud800"]
)
def test_a_bad_idempotency_key_is_400_with_the_id(key: Any) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(publish_with_key(key))
    assert (info.value.code, info.value.id) == (400, 1)
    assert info.value.message == (
        "idempotency_key must be a string of 1-64 printable characters"
    )


@pytest.mark.parametrize("key", ["k", "k" * 64, "order 17 / ✓ é", "💡" * 64])
def test_an_idempotency_key_of_1_to_64_characters_parses(key: str) -> None:
    assert parse_command(publish_with_key(key)).idempotency_key == key
    assert parse_command(publish_with_key(None)).idempotency_key is None
    # Other commands have no key: it is not read there.
    ping = json.dumps({"id": 1, "op": "ping", "idempotency_key": 5})
    assert parse_command(ping).idempotency_key is None


def test_channel_names() -> None:
    for good in (
        "chat:lobby",
        "a:",
        "a:b:c",
        "ns:user@host/x=y-z_1.2",
        "a:" + "x" * 253,
    ):
        assert valid_channel(good), good
    for bad in ("", "chat", ":x", "a:" + "x" * 254, "a:b c", "a:é", "a:b\n", "a;b:c"):
        assert not valid_channel(bad), bad


def test_private_user_channel_names() -> None:
    for name, users in [
        ("chat:dm#alice,bob", {"alice", "bob"}),
        ("chat:#alice", {"alice"}),
        ("inbox:a#al@x.org,b:c,d=e", {"al@x.org", "b:c", "d=e"}),
        ("a:#" + "u" * 252, {"u" * 252}),
        ("chat:lobby", None),
    ]:
        assert valid_channel(name), name
        assert channel_users(name) == users
    # "#" and "," only there, and no empty id.
    for bad in (
        "chat:dm#",
        "chat:dm#a,",
        "chat:dm#,a",
        "chat:dm#a,,b",
        "chat:dm#a#b",
        "chat:a,b",
        "ch#at:a",
        "chat:dm#a b",
        "chat:dm#é",
        "a:#" + "u" * 253,
    ):
        assert not valid_channel(bad), bad


def test_encoding_is_compact_json() -> None:
    assert encode_reply(1, {"offset": 2}) == '{"id":1,"result":{"offset":2}}'
    assert encode_error(3, 403, "no") == '{"id":3,"error":{"code":403,"message":"no"}}'
    assert encode_error(None, 400, "bad") == '{"error":{"code":400,"message":"bad"}}'
    assert (
        encode_push("a:b", "join", {"user": "é"})
        == '{"channel":"a:b","join":{"user":"é"}}'
    )
    assert (
        encode_pub("a:b", "e1", 3, b'"\xc3\xa9"', None)
        == '{"channel":"a:b","pub":{"offset":3,"epoch":"e1","data":"é"}}'
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(sorted(OPS)),
    st.sampled_from(["chat:x", "a:", "bad", ""]),
    st.fixed_dictionaries({"offset": json_values, "epoch": json_values}),
    st.integers(min_value=-2, max_value=2**54),
)
commands = st.fixed_dictionaries(
    {"id": st.integers(min_value=-1, max_value=2**53) | json_values},
    optional=dict.fromkeys(
        ("op", "channel", "data", "token", "since", "limit", "x"), field_values
    ),
)


@given(st.one_of(json_values, commands))
def test_any_json_value_parses_or_raises_command_error(value: Any) -> None:
    try:
        command = parse_command(json.dumps(value))
    except CommandError as exc:
        assert exc.code == 400
        assert exc.id is None or isinstance(exc.id, int)
        return
    assert isinstance(value, dict) and command.op in OPS
    assert command.id == value["id"]


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_command_error(text: str) -> None:
    try:
        parse_command(text)
    except CommandError as exc:
        assert exc.code == 400


# What json.loads accepts: also NaN, Infinity and lone surrogates.
parsed_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None), max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec=None), max_size=5), children)
    ),
    max_leaves=20,
)


@given(parsed_values)
def test_data_encodes_to_portable_json_or_is_refused(value: Any) -> None:
    # What a client may publish is what every client can decode: strict
    # UTF-8, no NaN, no Infinity. Anything else is refused at the edge.
    try:
        data = encode_data(value)
    except CommandError as exc:
        assert exc.code == 400
        return
    assert json.loads(data.decode("utf-8", errors="strict")) == value
    pub = encode_pub("a:b", "e1", 5, data, ClientInfo("c1", "ü"))
    assert json.loads(pub) == {
        "channel": "a:b",
        "pub": {
            "offset": 5,
            "epoch": "e1",
            "data": value,
            "info": {"client": "c1", "user": "ü"},
        },
    }


def test_results_splice_raw_publications() -> None:
    position = HistoryResult(
        "e1", 7, [Publication(6, b'{"a":[1]}'), Publication(7, b"null")]
    )
    text = encode_reply(
        4, encode_position(position, position.publications, recovered=True)
    )
    assert json.loads(text) == {
        "id": 4,
        "result": {
            "epoch": "e1",
            "offset": 7,
            "recovered": True,
            "publications": [
                {"offset": 6, "data": {"a": [1]}},
                {"offset": 7, "data": None},
            ],
        },
    }
    assert json.loads(encode_reply(1, encode_position(position))) == {
        "id": 1,
        "result": {"epoch": "e1", "offset": 7},
    }
