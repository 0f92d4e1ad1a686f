"""``tidings serve`` and ``tidings token``: the hub's command-line side."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_commands", "serve_main", "token_main"]

from .config import MIN_SECRET_BYTES


def add_commands(sub: Any) -> None:
    """Add the ``serve`` and ``token`` subcommands to the ``tidings`` parser."""
    serve = sub.add_parser(
        "serve",
        help="run the hub: channels, presence, history, HTTP API and demo pages",
        description=(
            "Run the tidings hub. With no options it listens on 127.0.0.1:8000 with "
            "the memory broker and the demo namespaces (chat, ticker, report). "
            "Settings come from --config FILE (TOML), then TIDINGS_* environment "
            "variables (e.g. TIDINGS_PORT, TIDINGS_SECRET, TIDINGS_API_KEY), then "
            "these flags."
        ),
    )
    serve.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    serve.add_argument("--host", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: 8000; 0 picks a free port")
    serve.add_argument("--secret", help="HS256 secret that signs connection tokens")
    serve.add_argument("--api-key", help="key the HTTP API requires")
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    serve.add_argument(
        "--no-demo",
        dest="demo",
        action="store_const",
        const=False,
        help="don't serve the demo pages or run the demo feeds",
    )
    token = sub.add_parser(
        "token",
        help="mint a connection token for development",
        description=(
            "Print a JWT (HS256) that a hub started with the same secret accepts."
        ),
    )
    token.add_argument("--user", required=True, help="the user id (the sub claim)")
    token.add_argument(
        "--channels",
        action="append",
        metavar="PATTERN",
        help="a channel pattern the user may subscribe to, e.g. 'chat:*'; repeatable",
    )
    token.add_argument(
        "--publish",
        action="append",
        metavar="PATTERN",
        help="a channel pattern the user may publish to; repeatable",
    )
    token.add_argument("--ttl", type=float, default=3600, help="seconds; default: 3600")
    token.add_argument("--secret", help="default: TIDINGS_SECRET or --config's secret")
    token.add_argument("--config", metavar="FILE", help="a TOML file of settings")


def _config(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from .config import load_config

    return load_config(args.config, os.environ, overrides)


def serve_main(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT or SIGTERM; return the exit status."""
    from ..cli import _error, _run
    from .config import ConfigError

    try:
        config = _config(
            args,
            {
                "host": args.host,
                "port": args.port,
                "secret": args.secret,
                "api_key": args.api_key,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
                "demo": args.demo,
            },
        )
    except ConfigError as exc:
        return _error(f"invalid configuration: {exc}")
    return _run(_serve(config))


async def _serve(config: Any) -> int:
    import asyncio

    from ..cli import _error, _on_signals
    from .app import Hub

    hub = Hub(config)
    try:
        await hub.start()
    except OSError as exc:
        await hub.close()
        return _error(f"cannot listen on {config.host} port {config.port}: {exc}")
    stop = asyncio.Event()
    _on_signals(asyncio.get_running_loop(), stop.set)
    print(f"tidings hub running at {hub.url}", flush=True)
    print(f"  WebSocket endpoint: {hub.ws_url}", flush=True)
    if config.demo:
        print(f"  demos: {hub.url}chat  {hub.url}ticker  {hub.url}report", flush=True)
    try:
        await stop.wait()
    finally:
        await hub.close()
    return 0


def token_main(args: argparse.Namespace) -> int:
    """Print a development token; return the exit status."""
    from ..cli import _error
    from .auth import mint_token
    from .config import ConfigError

    try:
        secret = args.secret or _config(args, {}).secret
    except ConfigError as exc:
        return _error(f"invalid configuration: {exc}")
    if not secret:
        return _error("no secret: pass --secret, set TIDINGS_SECRET, or use --config")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return _error(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    if args.ttl <= 0:
        return _error("--ttl must be positive")
    token = mint_token(
        secret, args.user, channels=args.channels, publish=args.publish, ttl=args.ttl
    )
    sys.stdout.write(token + "\n")
    return 0
