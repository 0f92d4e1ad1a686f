"""Tokens, channel permissions and the API key (tidings.hub.auth)."""

from __future__ import annotations

import time
import warnings
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from tidings.hub import auth
from tidings.hub.auth import (
    AuthError,
    Identity,
    api_key_matches,
    can_publish,
    can_subscribe,
    decode_token,
    mint_token,
)
from tidings.hub.config import NamespaceConfig

SECRET = "a test secret that is 32+ bytes long"


def test_a_minted_token_decodes_to_its_identity() -> None:
    token = mint_token(SECRET, "alice", channels=["chat:*"], publish=["chat:own"])
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decode_token(token, SECRET) == Identity(
        "alice", ("chat:*",), ("chat:own",), claims["exp"]
    )
    bob = decode_token(mint_token(SECRET, "bob"), SECRET)
    assert (bob.user, bob.channels, bob.publish) == ("bob", None, None)
    assert time.time() + 3590 < claims["exp"] <= time.time() + 3600
    assert decode_token(mint_token(SECRET, "c", channels=[]), SECRET).channels == ()


def test_an_expired_token_says_so_and_nothing_more() -> None:
    with pytest.raises(AuthError) as info:
        decode_token(mint_token(SECRET, "alice", ttl=-1), SECRET)
    assert str(info.value) == "token expired"


def encoded(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS512 wants a longer key
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=alg)


LATER = 2**40


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        encoded({"sub": "a", "exp": LATER}, "the wrong secret, 32 bytes or more"),
        encoded({"sub": "a"}),
        encoded({"exp": LATER}),
        encoded({"sub": "", "exp": LATER}),
        encoded({"sub": 5, "exp": LATER}),
        encoded({"sub": "a", "exp": LATER, "channels": "chat:*"}),
        encoded({"sub": "a", "exp": LATER, "channels": [1]}),
        encoded({"sub": "a", "exp": LATER, "publish": {"a": 1}}),
        encoded({"sub": "a", "exp": "later"}),
        encoded({"sub": "a", "exp": LATER}, alg="HS512"),  # right key, wrong alg
        jwt.encode({"sub": "a", "exp": LATER}, None, algorithm="none"),  # type: ignore[arg-type]
        mint_token(SECRET, "a") + "x",
        "x" * 8193,
        5,
        None,
    ],
)
def test_an_invalid_token_says_so_and_nothing_more(token: Any) -> None:
    with pytest.raises(AuthError) as info:
        decode_token(token, SECRET)
    assert str(info.value) == "invalid token"


def test_without_a_secret_no_token_is_valid() -> None:
    with pytest.raises(AuthError, match=r"^invalid token$"):
        decode_token(mint_token(SECRET, "alice"), None)


OPEN = NamespaceConfig(allow_anonymous=True, allow_publish=True)
READ_ONLY = NamespaceConfig(allow_anonymous=True)
MEMBERS = NamespaceConfig(allow_publish=True)
CLOSED = NamespaceConfig()


@pytest.mark.parametrize(
    ("identity", "namespace", "channel", "subscribe", "publish"),
    [
        (None, OPEN, "a:x", True, True),
        (None, READ_ONLY, "a:x", True, False),
        (None, MEMBERS, "a:x", False, False),
        (None, CLOSED, "a:x", False, False),
        (Identity("u"), OPEN, "a:x", True, True),
        (Identity("u"), READ_ONLY, "a:x", True, False),
        (Identity("u"), MEMBERS, "a:x", False, True),
        (Identity("u"), CLOSED, "a:x", False, False),
        # Claims decide wherever they are given, whatever the namespace.
        (Identity("u", ("a:*",), ("a:x",)), CLOSED, "a:x", True, True),
        (Identity("u", ("a:*",), ("a:x",)), OPEN, "a:y", True, False),
        (Identity("u", ("b:*",), ()), OPEN, "a:x", False, False),
        (Identity("u", ("a:[xy]",), None), READ_ONLY, "a:y", True, False),
        (Identity("u", ("A:*",), None), OPEN, "a:x", False, True),  # case counts
        # A private user channel: its users, whatever the claims say; to
        # publish, the namespace or claims must allow it too.
        (Identity("u"), CLOSED, "a:dm#u,v", True, False),
        (Identity("v"), OPEN, "a:dm#u,v", True, True),
        (Identity("u", (), ()), OPEN, "a:dm#u", True, False),
        (Identity("u", ("a:**",), ("a:**",)), CLOSED, "a:dm#u", True, True),
        (Identity("w", ("a:**",), ("a:**",)), OPEN, "a:dm#u,v", False, False),
        (Identity("uv"), OPEN, "a:dm#u,v", False, False),
        (Identity(""), OPEN, "a:dm#u", False, False),
        (None, OPEN, "a:dm#u", False, False),
    ],
)
def test_permissions(
    identity: Identity | None,
    namespace: NamespaceConfig,
    channel: str,
    subscribe: bool,
    publish: bool,
) -> None:
    assert can_subscribe(identity, namespace, channel) is subscribe
    assert can_publish(identity, namespace, channel) is publish


def test_the_api_key_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    compare = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert api_key_matches("apikey k3y", "k3y")
    assert api_key_matches("ApiKey  k3y ", "k3y")
    assert not api_key_matches("apikey k3", "k3y")
    assert not api_key_matches("apikey k3yy", "k3y")
    assert not api_key_matches("apikey ", "k3y")
    assert calls[0] == (b"k3y", b"k3y") and len(calls) == 5
    assert not api_key_matches("Bearer k3y", "k3y")
    assert not api_key_matches(None, "k3y")
    assert not api_key_matches("", "k3y")
    assert not api_key_matches("apikey é", "k3y")


def test_an_empty_api_key_matches_nothing() -> None:
    for header in ("apikey", "apikey ", "apikey  ", None, ""):
        assert not api_key_matches(header, "")


@pytest.mark.parametrize(
    ("pattern", "channel", "matches"),
    [
        ("chat:*", "chat:lobby", True),
        ("chat:*", "chat:lobby/private", False),  # * stays in its segment
        ("chat:room1*", "chat:room12", True),
        ("chat:room1*", "chat:room10/x", False),
        ("chat:*", "chat:a:b", False),
        ("chat:**", "chat:a:b/c", True),  # ** crosses them
        ("chat:room?", "chat:room1", True),
        ("chat:room?", "chat:room/", False),
        ("*:lobby", "chat:lobby", True),
        ("chat.v2:*", "chatxv2:x", False),  # the rest is literal
        ("chat:[ab]", "chat:a", True),
        ("chat:[!ab]", "chat:c", True),
        ("chat:[a-c]x", "chat:bx", True),
        ("chat:[a-c]x", "chat:dx", False),
        ("chat:[!ab]", "chat:/", False),
        ("chat:x[:/]", "chat:x/", False),
    ],
)
def test_patterns_match_within_segments(
    pattern: str, channel: str, matches: bool
) -> None:
    identity = Identity("u", (pattern,), (pattern,))
    assert can_subscribe(identity, MEMBERS, channel) is matches
    assert can_publish(identity, MEMBERS, channel) is matches


# -- the info claim ---------------------------------------------------------------


@pytest.mark.parametrize(
    "info", [{"name": "Alice", "avatar": "/a.png"}, "Ælfrida", [1, None], 0, True]
)
def test_the_info_claim_is_the_identitys_info(info: Any) -> None:
    token = mint_token(SECRET, "alice", info=info)
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["info"] == info
    assert decode_token(token, SECRET).info == info
    assert decode_token(mint_token(SECRET, "bob"), SECRET).info is None


def test_info_of_4096_bytes_is_accepted_and_one_more_is_a_clear_401() -> None:
    # 4096 bytes of UTF-8 (JSON quotes included), which JWT escapes to more.
    most = "é" * 2047
    assert decode_token(encoded({"sub": "a", "exp": LATER, "info": most}), SECRET)
    for info in [most + "x", {"a": "x" * 5000}]:
        with pytest.raises(AuthError, match="info must be JSON of at most 4096 bytes"):
            decode_token(encoded({"sub": "a", "exp": LATER, "info": info}), SECRET)
    with pytest.raises(ValueError, match="at most 4096 bytes"):
        mint_token(SECRET, "a", info=most + "x")


@pytest.mark.parametrize(
    "raw_info",
    [
        '"\\ud800"',  # a lone surrogate: no client could be sent it
        "NaN",
        "[Infinity]",
    ],
)
def test_info_no_client_could_be_sent_is_refused(raw_info: str) -> None:
    # Written by hand: PyJWT would refuse to encode some of these.
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    claims = f'{{"sub":"a","exp":{LATER},"info":{raw_info}}}'.encode()
    signing_input = header + b"." + jwt.utils.base64url_encode(claims)
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        signing_input, SECRET.encode()
    )
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    with pytest.raises(AuthError, match="info must be JSON"):
        decode_token(token, SECRET)


def test_the_subs_claim_names_the_channels_of_server_side_subscriptions() -> None:
    claims = {"sub": "a", "exp": LATER, "subs": ["inbox:a", "chat:dm#a,b", "inbox:a"]}
    assert decode_token(encoded(claims), SECRET).subs == ("inbox:a", "chat:dm#a,b")
    assert decode_token(mint_token(SECRET, "bob"), SECRET).subs == ()
    assert decode_token(encoded({**claims, "subs": ["x:y"] * 1024}), SECRET)
    for subs in ["inbox:a", ["no namespace"], [5], [f"x:{i}" for i in range(1025)]]:
        with pytest.raises(AuthError, match="subs must be a list of at most 1024"):
            decode_token(encoded({**claims, "subs": subs}), SECRET)
