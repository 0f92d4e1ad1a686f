"""Tokens signed with public keys, over real sockets: a hub with a PEM public
key, and a hub whose keys are a JWKS that a local HTTP server serves,
rotates, and fails to serve (tidings.hub.keys)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tidings.hub import Client, Hub, HubError, MemoryBroker, keys
from tidings.hub.auth import AuthError
from tidings.hub.keys import KeysUnavailable

from ..conftest import KeyPair, free_port, key_pair
from .conftest import HTTP, NAMESPACES, Connect, hub_config
from .test_auth import CLAIMS, hand_signed

BOUND = 10


class JWKSServer:
    """A JWKS document at ``url`` on 127.0.0.1, served by aiohttp: the
    public halves of ``keys`` (kid -> key pair) unless ``body`` or
    ``status`` say otherwise; ``requests`` counts the fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyPair] = {}
        self.body: bytes | None = None
        self.status = 200
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = self.body
        if body is None:
            document = {"keys": [key.jwk(kid) for kid, key in self.keys.items()]}
            body = json.dumps(document).encode()
        return web.Response(body=body, content_type="application/json")


@pytest.fixture
async def jwks() -> AsyncIterator[JWKSServer]:
    server = JWKSServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


StartHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """``hub = await start_hub(**config)``: a running hub on the memory
    broker with no secret (unless given); closed after the test."""
    hubs: list[Hub] = []

    async def start(**options: Any) -> Hub:
        hub = Hub(hub_config(**{"secret": None, **options}), MemoryBroker())
        hubs.append(hub)
        return await hub.start()

    yield start
    async with asyncio.timeout(BOUND):
        for hub in hubs:
            await hub.close()


def url(hub: Hub) -> str:
    return f"ws://127.0.0.1:{hub.port}/ws"


async def refused(connect: Connect, hub: Hub, token: str) -> tuple[int, int]:
    """The error code of a connect with ``token``, and the close code that
    follows."""
    peer = await connect(hub, hello=False)
    code, _ = await peer.error("connect", token=token)
    return code, await peer.closed()


# -- a PEM public key ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_a_hub_with_only_a_public_key_takes_its_tokens(
    start_hub: StartHub, connect: Connect, tmp_path: Path, kind: str
) -> None:
    key = key_pair(kind)
    (tmp_path / "key.pem").write_bytes(key.public)
    hub = await start_hub(token_public_key=str(tmp_path / "key.pem"))
    token = key.mint("alice", channels=["private:*"], info={"name": "Alice"})
    async with Client(url(hub), token=token, timeout=BOUND) as client:
        assert client.user == "alice"
        await client.subscribe("private:room")  # what the claims grant
    assert await refused(connect, hub, key_pair(kind, 1).mint("mallory")) == (
        401,
        4001,
    )


@pytest.mark.parametrize(
    "token",
    [
        hand_signed({"alg": "none"}, CLAIMS, None),
        hand_signed({"alg": "HS256"}, CLAIMS, key_pair("rsa").public),
        hand_signed({"alg": "RS256"}, CLAIMS, key_pair("rsa").public),
    ],
    ids=["alg none", "HS256 keyed with the public key", "RS256 made with HMAC"],
)
async def test_none_and_hmac_with_the_public_key_are_refused(
    start_hub: StartHub, connect: Connect, tmp_path: Path, token: str
) -> None:
    (tmp_path / "key.pem").write_bytes(key_pair("rsa").public)
    hub = await start_hub(token_public_key=str(tmp_path / "key.pem"))
    assert await refused(connect, hub, token) == (401, 4001)


# -- a JWKS -------------------------------------------------------------------


async def test_a_jwks_that_rotates_its_key(
    start_hub: StartHub, connect: Connect, jwks: JWKSServer
) -> None:
    old, new, other = key_pair("rsa"), key_pair("ec"), key_pair("ed25519")
    jwks.keys = {"2026-01": old}
    hub = await start_hub(token_jwks_url=jwks.url)
    assert jwks.requests == 1  # fetched at start
    async with Client(url(hub), token=old.mint("a", kid="2026-01")) as client:
        assert client.user == "a"
    jwks.keys = {"2026-02": new, "2026-02-ed": other}
    # A kid the hub does not know: one fetch, and the new key is known.
    async with Client(url(hub), token=new.mint("b", kid="2026-02")) as client:
        assert client.user == "b"
    assert jwks.requests == 2
    async with Client(url(hub), token=other.mint("c", kid="2026-02-ed")) as client:
        assert client.user == "c"
    # The old key is gone from the JWKS: its tokens are refused, and do not
    # make the hub fetch it again.
    token = old.mint("a", kid="2026-01")
    assert await refused(connect, hub, token) == (401, 4001)
    assert jwks.requests == 2


async def test_a_flood_of_unknown_kids_fetches_the_jwks_once_a_minute(
    start_hub: StartHub, connect: Connect, jwks: JWKSServer
) -> None:
    key = key_pair("ec")
    jwks.keys = {"known": key}
    hub = await start_hub(token_jwks_url=jwks.url)

    async def unknown_kid() -> tuple[int, int]:
        return await refused(connect, hub, key.mint("m", kid=secrets.token_hex(8)))

    # Over sockets, and then many more straight at the checks.
    assert set(await asyncio.gather(*(unknown_kid() for _ in range(20)))) == {
        (401, 4001)
    }
    outcomes = await asyncio.gather(
        *(
            hub.tokens.claims(key.mint("m", kid=secrets.token_hex(8)))
            for _ in range(500)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, AuthError) for outcome in outcomes)
    assert jwks.requests == 2  # at start, and once for the first unknown kid
    assert await hub.tokens.claims(key.mint("ok", kid="known"))
    assert jwks.requests == 2


async def test_while_the_jwks_is_down_an_unknown_kid_is_try_again_later(
    start_hub: StartHub,
    connect: Connect,
    http: HTTP,
    jwks: JWKSServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = key_pair("rsa")
    jwks.status = 500
    hub = await start_hub(token_jwks_url=jwks.url)  # starts all the same
    assert jwks.requests == 1
    token = key.mint("alice", channels=["private:*"], kid="k1")
    # Not 401, which would make the client give up: 503, close 1013.
    assert await refused(connect, hub, token) == (503, 1013)
    assert jwks.requests == 2
    with pytest.raises(HubError) as info:
        async with Client(url(hub), token=token, timeout=BOUND):
            pass
    assert info.value.code == 503
    answer = await http(hub, "GET", f"/sse?channel=private:a&token={token}")
    assert answer.status == 503, answer
    assert answer.json()["error"]["message"] == (
        "the token keys are unavailable, try again later"
    )
    assert jwks.requests == 2  # within the minute, no more fetches
    # Back: the next fetch (the minute up, here at once) finds the key.
    jwks.status = 200
    jwks.keys = {"k1": key}
    monkeypatch.setattr(keys, "JWKS_REFETCH_INTERVAL", 0.0)
    async with Client(url(hub), token=token, timeout=BOUND) as client:
        assert client.user == "alice"
    assert hub.metrics.errors["keys_unavailable"] == 3


async def test_known_keys_outlive_an_outage_of_the_jwks(
    start_hub: StartHub, connect: Connect, jwks: JWKSServer
) -> None:
    key = key_pair("ed25519")
    jwks.keys = {"k1": key}
    hub = await start_hub(token_jwks_url=jwks.url)
    peer = await connect(hub, key.mint("a", kid="k1"))
    jwks.status = 503
    assert await refused(connect, hub, key.mint("a", kid="k2")) == (503, 1013)
    assert jwks.requests == 2
    async with Client(url(hub), token=key.mint("a", kid="k1")) as client:
        assert client.user == "a"
    # A refresh is answered 503 too, and the connection stays.
    assert await peer.error("refresh", token=key.mint("a", kid="k3")) == (
        503,
        "the token keys are unavailable, try again later",
    )
    assert await peer.result("refresh", token=key.mint("a", kid="k1"))


async def test_a_jwks_that_cannot_be_reached_at_start(
    start_hub: StartHub, connect: Connect
) -> None:
    hub = await start_hub(token_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    token = key_pair("ec").mint("a", kid="k1")
    assert await refused(connect, hub, token) == (503, 1013)


async def test_a_key_removed_from_the_jwks_is_refused_once_the_keys_are_old(
    start_hub: StartHub,
    connect: Connect,
    jwks: JWKSServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compromised, kept = key_pair("rsa"), key_pair("ec")
    jwks.keys = {"a": compromised, "b": kept}
    hub = await start_hub(token_jwks_url=jwks.url)
    jwks.keys = {"b": kept}
    monkeypatch.setattr(keys, "JWKS_MAX_AGE", 0.0)  # the keys are old at once
    assert await refused(connect, hub, compromised.mint("m", kid="a")) == (401, 4001)
    assert jwks.requests == 2
    async with Client(url(hub), token=kept.mint("b", kid="b")) as client:
        assert client.user == "b"


def document(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


def without(jwk: dict[str, Any], member: str) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name != member}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>", "the JWKS is not JSON"),
        (b'{"keys": {}}', 'the JWKS has no "keys" list'),
        (b"[1]", 'the JWKS has no "keys" list'),
        (b" " * (keys.MAX_JWKS_BYTES + 1), "larger than"),
        (
            document(
                {"kty": "oct", "kid": "k1", "k": "c2VjcmV0"},  # a shared secret
                key_pair("ec384").jwk("k1"),  # a curve the hub does not take
                key_pair("rsa1024").jwk("k1"),  # too short
                {**key_pair("ec").jwk("k1"), "use": "enc"},
                {**key_pair("ec").jwk("k1"), "alg": "RS256"},  # mislabelled
                without(key_pair("rsa").jwk("k1"), "kid"),
                {"kty": "RSA", "kid": "k1", "n": "bad", "e": "AQAB"},
                {**key_pair("rsa").jwk("k1"), "alg": "none"},
                {**key_pair("rsa").jwk("k1"), "alg": ["RS256"]},
            ),
            "the JWKS has no signing key with a kid that is an RSA key",
        ),
    ],
    ids=["not JSON", "keys not a list", "not an object", "too large", "no usable key"],
)
async def test_a_jwks_the_hub_cannot_use_is_as_one_that_is_down(
    start_hub: StartHub,
    jwks: JWKSServer,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    why: str,
) -> None:
    jwks.body = body
    with caplog.at_level(logging.WARNING, "tidings.hub.keys"):
        hub = await start_hub(token_jwks_url=jwks.url)
    assert why in caplog.text
    with pytest.raises(KeysUnavailable):
        await hub.tokens.claims(key_pair("ec").mint("a", kid="k1"))


async def test_a_jwks_key_checks_only_what_its_type_and_alg_allow(
    start_hub: StartHub, jwks: JWKSServer
) -> None:
    rsa = key_pair("rsa")
    jwks.body = document(
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0IG9mIDMyIGJ5dGVzIG9yIG1vcmUhIQ"},
        rsa.jwk("rs256"),  # "alg": "RS256"
        without(rsa.jwk("any"), "alg"),
    )
    hub = await start_hub(token_jwks_url=jwks.url)
    for token in [
        # The JWKS's shared secret is never a key, nor its public keys' JSON.
        hand_signed(
            {"alg": "HS256", "kid": "shared"}, CLAIMS, b"secret of 32 bytes or more!!"
        ),
        hand_signed({"alg": "HS256", "kid": "rs256"}, CLAIMS, rsa.public),
        rsa.mint("a", kid="rs256", algorithm="RS512"),  # the JWK says RS256
        hand_signed({"alg": "none", "kid": "any"}, CLAIMS, None),
        rsa.mint("a"),  # no kid: no key of the JWKS
    ]:
        with pytest.raises(AuthError):
            await hub.tokens.claims(token)
    assert await hub.tokens.claims(rsa.mint("a", kid="rs256"))
    assert await hub.tokens.claims(rsa.mint("a", kid="any", algorithm="RS512"))


async def test_issuer_and_audience_over_a_jwks(
    start_hub: StartHub, connect: Connect, jwks: JWKSServer
) -> None:
    key = key_pair("ec")
    jwks.keys = {"k": key}
    hub = await start_hub(
        token_jwks_url=jwks.url,
        token_issuer="https://idp.example",
        token_audience="tidings",
        namespaces=NAMESPACES,
    )
    right = {"kid": "k", "issuer": "https://idp.example", "audience": "tidings"}
    async with Client(url(hub), token=key.mint("a", **right)) as client:
        assert client.user == "a"
    for wrong in [{"issuer": "https://evil.example"}, {"audience": "another"}]:
        token = key.mint("m", **{**right, **wrong})
        assert await refused(connect, hub, token) == (401, 4001)
