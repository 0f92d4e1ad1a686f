"""Tokens, channel permissions and the API key (tidings.hub.auth)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.warnings import InsecureKeyLengthWarning

from tidings.hub import ConfigError, Hub, HubConfig, auth
from tidings.hub.auth import (
    AuthError,
    Identity,
    Tokens,
    api_key_matches,
    can_publish,
    can_subscribe,
    decode_token,
    mint_token,
)
from tidings.hub.config import NamespaceConfig

from ..conftest import KEY_KINDS, KeyPair, key_pair

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
    claims = f'{{"sub":"a","exp":{LATER},"info":{raw_info}}}'
    token = hand_signed({"alg": "HS256", "typ": "JWT"}, claims, SECRET.encode())
    with pytest.raises(AuthError, match="info must be JSON"):
        decode_token(token, SECRET)


def hand_signed(header: dict[str, Any], claims: str, key: bytes | None) -> str:
    """A JWT whose signature is HMAC-SHA256 with ``key`` whatever its
    header says (none with no key), as an attacker would make it."""
    signing_input = b".".join(
        jwt.utils.base64url_encode(part)
        for part in (json.dumps(header).encode(), claims.encode())
    )
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


# -- public keys ------------------------------------------------------------------


CLAIMS = json.dumps({"sub": "mallory", "exp": LATER})


def tokens(tmp_path: Path, key: KeyPair | None = None, **config: Any) -> Tokens:
    """The token checks of a hub with ``key``'s public half (and no secret
    unless given)."""
    if key is not None:
        path = tmp_path / "public.pem"
        path.write_bytes(key.public)
        config["token_public_key"] = str(path)
    return Tokens(HubConfig(**config))


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("rsa", None),
        ("rsa", "RS384"),
        ("rsa", "RS512"),
        ("ec", None),
        ("ed25519", None),
    ],
)
async def test_a_token_signed_with_a_private_key_passes_its_public_key(
    tmp_path: Path, kind: str, algorithm: str | None
) -> None:
    key = key_pair(kind)
    token = mint_token(key.private, "alice", algorithm=algorithm, info={"n": 1})
    header = jwt.get_unverified_header(token)
    assert header["alg"] == (algorithm or KEY_KINDS[kind])
    identity = await tokens(tmp_path, key).identity(token)
    assert (identity.user, identity.info) == ("alice", {"n": 1})
    # A PEM string is a key too, and kid names it.
    kid = jwt.get_unverified_header(mint_token(key.private.decode(), "a", kid="k1"))
    assert kid["kid"] == "k1"


async def test_a_hub_with_a_secret_and_a_public_key_takes_both(
    tmp_path: Path,
) -> None:
    checks = tokens(tmp_path, key_pair("ec"), secret=SECRET)
    assert (await checks.identity(mint_token(SECRET, "a"))).user == "a"
    assert (await checks.identity(key_pair("ec").mint("b"))).user == "b"


def refused_tokens() -> list[Any]:
    """Tokens that a hub with the RSA key (and the secret, or not) must
    refuse, each with what it tries."""
    rsa_key, ec_key = key_pair("rsa"), key_pair("ec")
    return [
        pytest.param(
            hand_signed({"alg": "none", "typ": "JWT"}, CLAIMS, None), id="alg none"
        ),
        pytest.param(
            hand_signed({"alg": "None"}, CLAIMS, None), id="alg None, no signature"
        ),
        pytest.param(
            # The public key is public: an HMAC with it proves nothing.
            hand_signed({"alg": "HS256"}, CLAIMS, rsa_key.public),
            id="HS256 keyed with the public key's PEM",
        ),
        pytest.param(
            hand_signed({"alg": "RS256"}, CLAIMS, rsa_key.public),
            id="RS256 header, HMAC keyed with the PEM",
        ),
        pytest.param(
            hand_signed({"alg": "RS256"}, CLAIMS, SECRET.encode()),
            id="RS256 header, HMAC keyed with the secret",
        ),
        pytest.param(key_pair("rsa", 1).mint("mallory"), id="another RSA key"),
        pytest.param(ec_key.mint("mallory"), id="an EC key the hub lacks"),
        pytest.param(
            jwt.encode(
                json.loads(CLAIMS), load_pem_private_key(rsa_key.private, None), "PS256"
            ),
            id="PS256, an algorithm of the key's not pinned",
        ),
        pytest.param(rsa_key.mint("mallory", ttl=-1), id="expired"),
    ]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["no secret", "a secret"])
@pytest.mark.parametrize("token", refused_tokens())
async def test_the_public_key_refuses_what_it_did_not_sign(
    tmp_path: Path, secret: str | None, token: str
) -> None:
    checks = tokens(tmp_path, key_pair("rsa"), secret=secret)
    with pytest.raises(AuthError, match=r"^(invalid token|token expired)$"):
        await checks.claims(token)


async def test_a_secret_checks_hs256_only(tmp_path: Path) -> None:
    checks = tokens(tmp_path, secret=SECRET)
    for token in [
        key_pair("rsa").mint("a"),  # never checked against the secret
        hand_signed({"alg": "RS256"}, CLAIMS, SECRET.encode()),
        hand_signed({"alg": "HS256"}, CLAIMS, key_pair("rsa").public),
        hand_signed({"alg": "none"}, CLAIMS, None),
    ]:
        with pytest.raises(AuthError, match=r"^invalid token$"):
            await checks.claims(token)
    assert await checks.claims(hand_signed({"alg": "HS256"}, CLAIMS, SECRET.encode()))


async def test_without_any_key_no_token_is_valid(tmp_path: Path) -> None:
    checks = tokens(tmp_path)
    for token in [mint_token(SECRET, "a"), key_pair("ec").mint("a")]:
        with pytest.raises(AuthError, match=r"^invalid token$"):
            await checks.claims(token)


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"issuer": "https://idp.example", "audience": "hub"}, True),
        ({"audience": "hub"}, False),
        ({"issuer": "https://idp.example"}, False),
        ({"issuer": "https://evil.example", "audience": "hub"}, False),
        ({"issuer": "https://idp.example", "audience": "another"}, False),
    ],
)
async def test_issuer_and_audience_when_named_are_required(
    tmp_path: Path, claims: dict[str, Any], accepted: bool
) -> None:
    checks = tokens(
        tmp_path,
        key_pair("ed25519"),
        token_issuer="https://idp.example",
        token_audience="hub",
    )
    token = key_pair("ed25519").mint("alice", **claims)
    if accepted:
        assert (await checks.identity(token)).user == "alice"
    else:
        with pytest.raises(AuthError, match=r"^invalid token$"):
            await checks.identity(token)


async def test_a_token_for_an_audience_the_hub_does_not_name_is_refused(
    tmp_path: Path,
) -> None:
    # RFC 7519 §4.1.3: a hub that is not in the token's aud must refuse it.
    checks = tokens(tmp_path, key_pair("ec"))
    with pytest.raises(AuthError, match=r"^invalid token$"):
        await checks.claims(key_pair("ec").mint("a", audience="another app"))
    assert await checks.claims(key_pair("ec").mint("a", issuer="anyone"))


@pytest.mark.parametrize(
    ("key", "algorithm", "error"),
    [
        (SECRET, "RS256", "signs with HS256, not 'RS256'"),
        (key_pair("rsa").private, "ES256", "signs with RS256, RS384, RS512"),
        (key_pair("rsa").private, "HS256", "not 'HS256'"),
        (key_pair("ec").private, "none", "not 'none'"),
        (key_pair("ec384").private, None, "not an RSA key (2048 bits or more), an"),
        (key_pair("rsa1024").private, None, "not an RSA key (2048 bits or more), an"),
        (key_pair("ec").public, None, "not an unencrypted PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nnonsense", None, "not an unencrypted PEM"),
    ],
)
def test_mint_token_signs_only_as_the_key_allows(
    key: str | bytes, algorithm: str | None, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        mint_token(key, "a", algorithm=algorithm)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "cannot read token_public_key"),
        (b"not a key", "is not a PEM public key"),
        (key_pair("rsa").private, "is not a PEM public key"),
        (key_pair("ec384").public, "is not an RSA key (2048 bits or more), an EC"),
        (key_pair("rsa1024").public, "is not an RSA key (2048 bits or more), an EC"),
    ],
)
def test_a_public_key_the_hub_cannot_use_is_a_config_error(
    tmp_path: Path, content: bytes | None, error: str
) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(error)):
        Hub(HubConfig(token_public_key=str(path)))


def test_the_subs_claim_names_the_channels_of_server_side_subscriptions() -> None:
    claims = {"sub": "a", "exp": LATER, "subs": ["inbox:a", "chat:dm#a,b", "inbox:a"]}
    assert decode_token(encoded(claims), SECRET).subs == ("inbox:a", "chat:dm#a,b")
    assert decode_token(mint_token(SECRET, "bob"), SECRET).subs == ()
    assert decode_token(encoded({**claims, "subs": ["x:y"] * 1024}), SECRET)
    for subs in ["inbox:a", ["no namespace"], [5], [f"x:{i}" for i in range(1025)]]:
        with pytest.raises(AuthError, match="subs must be a list of at most 1024"):
            decode_token(encoded({**claims, "subs": subs}), SECRET)
