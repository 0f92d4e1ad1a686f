"""The ``tidings`` command line: the hub (``serve``, ``token``), an ``echo``
server, the ``connect`` client, the ``bench`` load tool and ``demo``.

The side-by-side benchmark against other libraries is a development tool,
not part of the package: ``python -m benchmarks`` in a checkout
(``benchmarks/README.md``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from . import __version__

if TYPE_CHECKING:
    import asyncio
    import ssl

    from .engine.connection import Message, WebSocket
    from .hub import Hub
    from .hub.config import HubConfig
    from .hub.workers import Worker

#: Close codes after which ``tidings connect`` exits with status 0.
CLEAN_CODES = frozenset({1000, 1001, 1005})

#: Seconds ``tidings connect`` waits, after stdin ends, for each next reply.
REPLY_WAIT = 3.0

_CONNECT_EPILOG = f"""\
Lines read from stdin are sent as text messages. Received text is written to
stdout, one message per line; binary as "<binary N bytes> HEX", or appended to
FILE with --binary-out. At the end of stdin the client waits for as many
replies as it sent messages (at most {REPLY_WAIT:g} s without one), then closes with
1000. The close code is printed on stderr as "closed: CODE [REASON]".

exit status:
  0  the connection closed with 1000, 1001 or 1005 (no code)
  1  it could not be opened (one line on stderr says why), or it closed with
     any other code (1006: connection lost)
"""


class _Version(argparse.Action):
    """``--version``: print the version, the speedups in use and the event
    loop, then exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and the event loop, then exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from .engine.eventloop import loop_name
        from .protocol.speedups import implementation

        python = sys.version.split()[0]
        print(
            f"tidings {__version__} (Python {python}, "
            f"{implementation()} protocol speedups, {loop_name()} event loop)"
        )
        parser.exit()


def _header(text: str) -> tuple[str, str]:
    """Parse ``--header 'Name: value'``."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _size(text: str) -> int:
    """Parse ``--max-size``: a number of bytes, 0 or more."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``tidings`` command."""
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="WebSocket toolkit and real-time messaging hub.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    _add_token(sub)
    _add_echo(sub)
    _add_connect(sub)
    _add_bench(sub)
    demo = sub.add_parser(
        "demo",
        help="run a client and a server protocol engine against each other in memory",
    )
    demo.add_argument(
        "message",
        nargs="?",
        default="tidings: news, prices and chat lines the moment they happen",
    )
    return parser


def _add_echo(sub: Any) -> None:
    echo = sub.add_parser(
        "echo",
        help="run a WebSocket echo server",
        description="Run a WebSocket server that sends every message back as it "
        "came. It prints 'echo server listening on ws://HOST:PORT/' once ready "
        "and runs until SIGINT or SIGTERM, then closes connections with 1001.",
    )
    echo.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    echo.add_argument(
        "--port", type=int, default=8765, help="0 picks a free port; default: 8765"
    )
    echo.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain")
    echo.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    echo.add_argument(
        "--max-size",
        type=_size,
        default=1 << 20,
        metavar="BYTES",
        help="largest message accepted, 0 for no limit; default: %(default)s",
    )
    echo.add_argument(
        "--no-compression", action="store_true", help="refuse permessage-deflate"
    )


def _add_connect(sub: Any) -> None:
    connect = sub.add_parser(
        "connect",
        help="talk to a WebSocket server from the terminal or a pipe",
        description="Connect to a WebSocket server, send stdin's lines and print "
        "what arrives.",
        epilog=_CONNECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connect.add_argument("url", metavar="URL", help="ws:// or wss:// URI")
    connect.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header; repeatable",
    )
    connect.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="P",
        help="subprotocol to offer; repeatable",
    )
    connect.add_argument(
        "--insecure",
        action="store_true",
        help="skip TLS certificate and host name verification",
    )
    connect.add_argument(
        "--binary-out",
        metavar="FILE",
        help="append received binary messages to FILE instead of printing them",
    )
    connect.add_argument(
        "--no-compression", action="store_true", help="don't offer permessage-deflate"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.message)
        return 0
    if args.command == "echo":
        if (args.tls_cert is None) != (args.tls_key is None):
            parser.error("--tls-cert and --tls-key go together")
        return _run(_echo_main(args))
    if args.command == "connect":
        return _run(_connect_main(args))
    if args.command == "bench":
        return _run(_bench_main(args))
    if args.command == "serve":
        return _serve_main(args)
    if args.command == "token":
        return _token_main(args)
    parser.print_help()
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; a Ctrl-C it didn't handle exits with 130."""
    from .engine.eventloop import run

    try:
        return run(main)
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    """Print ``tidings: message`` on stderr and return exit status 1."""
    print(f"tidings: {message}", file=sys.stderr, flush=True)
    return 1


def _on_signals(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    """Call ``callback()`` on SIGINT and SIGTERM, where the loop supports it."""
    import contextlib
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows, nor outside the main thread: Ctrl-C then ends it all.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, callback)


# -- tidings bench -------------------------------------------------------


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="load-test a WebSocket server: echo round trips, or hub fan-out",
        description="Send messages to a WebSocket server that echoes them, from "
        "many connections, each keeping a number of messages in flight, and "
        "report round trips per second and their latency. With --hub CHANNEL, "
        "the URL is a tidings hub's /ws: subscribers on CHANNEL and one "
        "publisher at --rate, every delivery timed. Ctrl-C ends the run "
        "early with the figures so far.",
    )
    bench.add_argument("url", metavar="URL", help="ws:// or wss:// URI")
    bench.add_argument(
        "-c", "--connections", type=_positive, default=1, help="default: 1"
    )
    bench.add_argument(
        "-k",
        "--in-flight",
        type=_positive,
        default=1,
        help="messages in flight per connection (default: 1, send and wait)",
    )
    bench.add_argument(
        "-s", "--size", type=_size, default=32, help="bytes per message (32)"
    )
    bench.add_argument("--text", action="store_true", help="text, not binary")
    bench.add_argument(
        "-d", "--duration", type=float, default=10.0, help="seconds measured (10)"
    )
    bench.add_argument(
        "--warmup", type=float, default=1.0, help="seconds before measuring (1)"
    )
    bench.add_argument(
        "-r",
        "--repeat",
        type=_positive,
        default=1,
        help="measure this many times in a row, -d seconds each, and report "
        "each (default: 1)",
    )
    bench.add_argument(
        "--compression", action="store_true", help="offer permessage-deflate"
    )
    bench.add_argument(
        "--insecure",
        action="store_true",
        help="skip TLS certificate and host name verification",
    )
    bench.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object (with --repeat, one line "
        "per measurement as it ends, then the whole run's)",
    )
    hub = bench.add_argument_group("hub fan-out")
    hub.add_argument("--hub", metavar="CHANNEL", help="fan out on this channel")
    hub.add_argument("--subscribers", type=_positive, default=100, help="default: 100")
    hub.add_argument(
        "--rate", type=_positive, default=50, help="publications per second (50)"
    )
    hub.add_argument("--token", help="a token for the hub's connect")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


async def _bench_main(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .bench import BenchResult, bench, fanout

    stop = asyncio.Event()
    _on_signals(asyncio.get_running_loop(), stop.set)
    end = "\r" if sys.stderr.isatty() else "\n"

    def progress(elapsed: float, so_far: BenchResult) -> None:
        print(
            f"{elapsed:5.1f} s  {so_far.rate:12,.0f} msg/s  p50 "
            f"{so_far.latency_p50_ms:.3f} ms  p99 {so_far.latency_p99_ms:.3f} ms",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    def window(index: int, result: BenchResult) -> None:
        if args.repeat == 1:
            return
        if args.json:
            print(json.dumps({"window": index, **result.to_json()}), flush=True)
        else:
            print(f"{result.line(index):<72}", file=sys.stderr, flush=True)

    common: dict[str, Any] = {
        "size": args.size,
        "duration": args.duration,
        "warmup": args.warmup,
        "compression": args.compression,
        "ssl": _client_tls(args.insecure) if args.url.startswith("wss:") else None,
        "progress": progress,
        "stop": stop,
        "repeat": args.repeat,
        "on_window": window,
    }
    try:
        if args.hub is not None:
            result = await fanout(
                args.url,
                args.hub,
                subscribers=args.subscribers,
                rate=args.rate,
                token=args.token,
                **common,
            )
        else:
            result = await bench(
                args.url,
                connections=args.connections,
                in_flight=args.in_flight,
                text=args.text,
                **common,
            )
    except Exception as exc:
        return _error(f"{args.url}: {_describe_failure(exc)}")
    if end == "\r":
        print(file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.summary(), flush=True)
    # The figures are printed either way; a script must still see that they
    # leave out what was lost.
    return 0 if result.complete else 1


# -- tidings serve and tidings token ------------------------------------


def _add_serve(sub: Any) -> None:
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
    serve.add_argument(
        "--token-public-key",
        metavar="FILE",
        help="PEM public key (RSA, EC P-256 or Ed25519) that checks RS256, ES256 "
        "or EdDSA connection tokens",
    )
    serve.add_argument(
        "--token-jwks-url",
        metavar="URL",
        help="a JWKS document whose keys check RS256, ES256 or EdDSA tokens by kid",
    )
    serve.add_argument("--token-issuer", help="the iss claim tokens must carry")
    serve.add_argument("--token-audience", help="the aud claim tokens must carry")
    serve.add_argument("--api-key", help="key the HTTP API requires")
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="memory (the default: one process) or redis://HOST:PORT/DB, which "
        "makes every node on that Redis one hub; "
        "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB], which follows "
        "Sentinel's failovers; or redis+cluster://HOST:PORT[,HOST:PORT...] for "
        "a Redis Cluster, each channel on one shard (rediss:// and rediss+... "
        "with TLS); the password in the URL or TIDINGS_BROKER_PASSWORD "
        "(docs/scaling.md)",
    )
    serve.add_argument(
        "--presence-ttl",
        type=float,
        metavar="SECONDS",
        help="presence entries of a node that stopped refreshing them expire "
        "after this; default: 30",
    )
    serve.add_argument(
        "--idempotency-window",
        type=float,
        metavar="SECONDS",
        help="a publish repeating an idempotency_key within this publishes "
        "nothing and answers the first one's position; 0: off; default: 300",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N processes serving the port, each a node of the hub on the "
        "broker (which must be Redis); 0: one per core; default: 1",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also answer /metrics and /healthz on PORT; worker i on PORT+i; "
        "0 picks free ports",
    )
    serve.add_argument(
        "--no-demo",
        dest="demo",
        action="store_const",
        const=False,
        help="no demo: no demo pages, feeds or demo namespaces (chat, ticker, report)",
    )


def _add_token(sub: Any) -> None:
    token = sub.add_parser(
        "token",
        help="mint a connection token (or a channel token) for development",
        description=(
            "Print a JWT that a hub started with the same secret accepts (HS256), "
            "or, with --private-key, one that a hub with its public key accepts "
            "(RS256, ES256 or EdDSA, by the key's type). The iss and aud claims "
            "are --config's token_issuer and token_audience, if any."
        ),
    )
    token.add_argument("--user", required=True, help="the user id (the sub claim)")
    token.add_argument(
        "--channel",
        help="mint a channel token instead: USER may subscribe to CHANNEL "
        "(exactly), whatever the connection's token says",
    )
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
    token.add_argument(
        "--subs",
        action="append",
        metavar="CHANNEL",
        help="a channel the hub subscribes the user to at connect; repeatable",
    )
    token.add_argument("--ttl", type=float, default=3600, help="seconds; default: 3600")
    token.add_argument(
        "--info",
        metavar="JSON",
        help="what presence, joins and leaves show of the client (the info "
        """claim), e.g. '{"name": "Alice"}'; at most 4096 bytes""",
    )
    token.add_argument("--secret", help="default: TIDINGS_SECRET or --config's secret")
    token.add_argument(
        "--private-key",
        metavar="FILE",
        help="sign with this PEM private key (RSA, EC P-256 or Ed25519) "
        "rather than the secret",
    )
    token.add_argument("--kid", help="the key's id in the hub's JWKS (the kid header)")
    token.add_argument("--config", metavar="FILE", help="a TOML file of settings")


def _config(args: argparse.Namespace, overrides: dict[str, Any]) -> HubConfig:
    import os

    from .hub.config import load_config

    return load_config(args.config, os.environ, overrides)


def _serve_main(args: argparse.Namespace) -> int:
    """Run the hub until SIGINT or SIGTERM; return the exit status."""
    from .hub.config import ConfigError

    try:
        config = _config(
            args,
            {
                "host": args.host,
                "port": args.port,
                "secret": args.secret,
                "token_public_key": args.token_public_key,
                "token_jwks_url": args.token_jwks_url,
                "token_issuer": args.token_issuer,
                "token_audience": args.token_audience,
                "api_key": args.api_key,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
                "broker": args.broker,
                "presence_ttl": args.presence_ttl,
                "idempotency_window": args.idempotency_window,
                "workers": args.workers,
                "metrics_port": args.metrics_port,
                "demo": args.demo,
            },
        )
    except ConfigError as exc:
        return _error(f"invalid configuration: {exc}")
    if config.workers != 1:
        from .hub.workers import supervise

        return supervise(config, _serve_worker)
    return _run(_serve(config))


def _serve_worker(config: HubConfig, worker: Worker) -> int:
    """The body of a worker process of ``tidings serve --workers``."""
    return _run(_serve(config, worker))


async def _serve(config: HubConfig, worker: Worker | None = None) -> int:
    import asyncio

    from .exceptions import TidingsError
    from .hub import Hub

    port, metrics_port = config.port, config.metrics_port
    try:
        hub = Hub(config)
        if worker is None:
            await hub.start()
        else:
            await hub.start(sock=worker.sock, reuse_port=worker.sock is None)
            metrics_port = worker.metrics_port(metrics_port)
        if metrics_port is not None:
            port = metrics_port
            metrics_port = await hub.listen_metrics(port)
    except OSError as exc:
        await hub.close()
        return _error(f"cannot listen on {config.host} port {port}: {exc}")
    except TidingsError as exc:  # a hook missing, or its HTTP client
        return _error(f"invalid configuration: {exc}")
    stop = asyncio.Event()
    _on_signals(asyncio.get_running_loop(), stop.set)
    if worker is None:
        print("\n".join(_banner(hub, metrics_port)), flush=True)
    else:  # the parent prints the first worker's once every worker serves
        worker.on_parent_gone(stop.set)
        worker.serving(metrics_port, _banner(hub, None))
    try:
        await stop.wait()
    finally:
        await hub.close()
    return 0


def _banner(hub: Hub, metrics_port: int | None) -> list[str]:
    """What ``tidings serve`` prints once it serves: where, and how."""
    from .hub.config import HOOKS

    config = hub.config
    lines = [
        f"tidings hub running at {hub.url}",
        f"  WebSocket endpoint: {hub.ws_url}",
    ]
    broker = hub.broker.status()
    if broker["kind"] in ("redis", "redis-cluster"):
        state = (
            "connected" if broker["ok"] else f"unreachable, retrying: {broker['error']}"
        )
        lines.append(f"  broker: {broker['kind']} at {broker['server']} ({state})")
    else:
        lines.append("  broker: memory (this process only)")
    if config.proxy.enabled:
        asked = ", ".join(hook for hook in HOOKS if getattr(config.proxy, hook))
        lines.append(f"  the application decides: {asked} (docs/integrate.md)")
    if not config.namespaces:
        lines.append(
            "  no namespaces: clients can subscribe to nothing "
            "(set [namespaces] in --config; see docs/hub.md)"
        )
    if config.demo:
        lines.append(f"  demos: {hub.url}chat  {hub.url}ticker  {hub.url}report")
    if metrics_port is not None:
        lines.append(f"  /metrics also on port {metrics_port}")
    return lines


def _token_main(args: argparse.Namespace) -> int:
    """Print a development token; return the exit status."""
    import json
    from pathlib import Path

    from .hub.auth import mint_channel_token, mint_token
    from .hub.config import MIN_SECRET_BYTES, ConfigError
    from .hub.hooks import check_info

    try:
        config = _config(args, {})
    except ConfigError as exc:
        return _error(f"invalid configuration: {exc}")
    key: str | bytes | None = args.secret or config.secret
    if args.private_key is not None:
        try:
            key = Path(args.private_key).read_bytes()
        except OSError as exc:
            return _error(f"cannot read {args.private_key}: {exc.strerror}")
    elif not isinstance(key, str):
        return _error(
            "no secret: pass --secret (or --private-key), set TIDINGS_SECRET, "
            "or use --config"
        )
    elif len(key.encode()) < MIN_SECRET_BYTES:
        return _error(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
    if args.ttl <= 0:
        return _error("--ttl must be positive")
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except (ValueError, RecursionError):
            return _error("--info must be JSON")
    if args.channel is not None and (args.channels or args.publish or args.subs):
        return _error(
            "a channel token (--channel) has no --channels, --publish or --subs"
        )
    try:
        check_info(info)
    except ValueError as exc:  # too large, or not portable JSON
        return _error(f"--info: {exc}")
    signing = {
        "ttl": args.ttl,
        "info": info,
        "kid": args.kid,
        "issuer": config.token_issuer,
        "audience": config.token_audience,
    }
    try:
        if args.channel is not None:
            token = mint_channel_token(key, args.user, args.channel, **signing)
        else:
            token = mint_token(
                key,
                args.user,
                channels=args.channels,
                publish=args.publish,
                subs=args.subs,
                **signing,
            )
    except ValueError as exc:  # a key that cannot sign
        return _error(f"--private-key: {exc}")
    sys.stdout.write(token + "\n")
    return 0


# -- tidings echo ------------------------------------------------------


async def _echo(ws: WebSocket) -> None:
    """Send every message back as it came."""
    async for message in ws:
        await ws.send(message)


def _server_tls(cert: str, key: str) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def _echo_main(args: argparse.Namespace) -> int:
    """``tidings echo``: serve until SIGINT or SIGTERM."""
    import asyncio

    from .engine.server import serve
    from .protocol import DeflateConfig

    context = None
    if args.tls_cert is not None:
        try:
            context = _server_tls(args.tls_cert, args.tls_key)
        except OSError as exc:  # ssl.SSLError is an OSError
            return _error(f"cannot load the TLS certificate: {exc}")
    server = serve(
        _echo,
        args.host,
        args.port,
        ssl=context,
        compression=None if args.no_compression else DeflateConfig(),
        max_message_size=args.max_size or None,
    )
    try:
        await server.start()
    except OSError as exc:
        return _error(f"cannot listen on {args.host} port {args.port}: {exc}")
    stop = asyncio.Event()
    _on_signals(asyncio.get_running_loop(), stop.set)
    try:
        host = f"[{args.host}]" if ":" in args.host else args.host
        scheme = "wss" if context else "ws"
        print(f"echo server listening on {scheme}://{host}:{server.port}/", flush=True)
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    return 0


# -- tidings connect ---------------------------------------------------


def _client_tls(insecure: bool) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe_failure(exc: BaseException) -> str:
    """Say in a few words why opening a connection failed."""
    import ssl

    from .exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, InvalidStatus):
        return f"server answered HTTP {exc.status}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS error: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError) or _all_refused(exc):
        return "connection refused"
    if isinstance(exc, ConnectionClosed):
        return "the connection closed during the handshake"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _all_refused(exc: BaseException) -> bool:
    """Whether asyncio's "Multiple exceptions" error holds only refusals."""
    import errno
    import re

    text = str(exc)
    codes = re.findall(r"\[Errno (\d+)\]", text)
    return (
        isinstance(exc, OSError)
        and text.startswith("Multiple exceptions")
        and bool(codes)
        and all(int(code) == errno.ECONNREFUSED for code in codes)
    )


async def _connect_main(args: argparse.Namespace) -> int:
    """``tidings connect``: open, talk, close; return the exit status."""
    import contextlib

    from .exceptions import InvalidURI
    from .protocol import parse_uri

    try:
        parse_uri(args.url)
    except InvalidURI as exc:
        return _error(str(exc))
    binary_out: BinaryIO | None = None
    if args.binary_out is not None:
        try:
            binary_out = open(args.binary_out, "ab")  # noqa: SIM115
        except OSError as exc:
            return _error(f"cannot open {args.binary_out}: {exc.strerror}")
    with binary_out or contextlib.nullcontext():
        return await _talk(args, binary_out)


async def _talk(args: argparse.Namespace, binary_out: BinaryIO | None) -> int:
    """Open the connection, run the console, report how it closed."""
    import asyncio

    from .engine.client import connect
    from .exceptions import TidingsError
    from .protocol import DeflateConfig, parse_uri

    client = connect(
        args.url,
        ssl=_client_tls(args.insecure) if parse_uri(args.url).secure else None,
        headers=args.header,
        subprotocols=args.subprotocol,
        compression=None if args.no_compression else DeflateConfig(),
    )
    try:
        ws = await client
    except (OSError, TimeoutError, ValueError, TidingsError) as exc:
        return _error(f"cannot connect to {args.url}: {_describe_failure(exc)}")
    detail = f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""
    print(f"connected: {args.url}{detail}", file=sys.stderr, flush=True)
    console = _Console(ws, binary_out)
    _on_signals(asyncio.get_running_loop(), console.stop.set)
    await console.run()
    code = ws.close_code or 1006
    reason = ws.close_reason or ("connection lost" if code == 1006 else "")
    print(f"closed: {code} {reason}".rstrip(), file=sys.stderr, flush=True)
    return 0 if code in CLEAN_CODES else 1


class _Console:
    """One ``tidings connect`` session: stdin to the socket, the socket to
    stdout. Setting :attr:`stop` ends it early."""

    def __init__(self, ws: WebSocket, binary_out: BinaryIO | None) -> None:
        import asyncio

        self.ws = ws
        self.binary_out = binary_out
        self.stop = asyncio.Event()
        self.sent = 0
        self.received = 0
        self.progress = asyncio.Condition()

    async def run(self) -> None:
        """Talk until stdin ends, the server closes or :attr:`stop` is set;
        then close with 1000."""
        import asyncio

        sending = asyncio.create_task(self._send_lines())
        receiving = asyncio.create_task(self._receive())
        stopping = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                {sending, receiving, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            if sending in done and not self.stop.is_set():
                await self._wait_for_replies(receiving, stopping)
        finally:
            sending.cancel()
            stopping.cancel()
            # Receiving goes on during the closing handshake: a peer still
            # sending would otherwise fill the queue, reading would pause, and
            # its close frame would never be read.
            await self.ws.close(1000)
            await _settle(sending, stopping, receiving)

    async def _send_lines(self) -> None:
        from .exceptions import ConnectionClosed

        batches = _stdin_lines()
        while (lines := await batches.get()) is not None:
            for line in lines:
                try:
                    await self.ws.send(line)
                except ConnectionClosed:
                    return
                self.sent += 1

    async def _receive(self) -> None:
        from .exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                self._show(message)
                async with self.progress:
                    self.received += 1
                    self.progress.notify_all()
        except ConnectionClosed:
            pass

    async def _wait_for_replies(self, *ends: asyncio.Task[Any]) -> None:
        """Wait until as many messages came as were sent, the connection
        closes, or no message comes for :data:`REPLY_WAIT` seconds."""
        import asyncio

        async def replies() -> None:
            async with self.progress:
                while self.received < self.sent:
                    async with asyncio.timeout(REPLY_WAIT):
                        await self.progress.wait()

        waiting = asyncio.create_task(replies())
        try:
            await asyncio.wait({waiting, *ends}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)

    def _show(self, message: Message) -> None:
        if isinstance(message, bytes) and self.binary_out is not None:
            self.binary_out.write(message)
            self.binary_out.flush()
            return
        if isinstance(message, str):
            line = message.encode() + b"\n"
        else:
            line = f"<binary {len(message)} bytes> {message.hex()}\n".encode()
        try:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # as in `tidings connect URL | head`
            _silence_stdout()
            self.stop.set()


async def _settle(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks``, wait for them, and raise what any of them raised."""
    import asyncio

    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.result()


def _silence_stdout() -> None:
    """Point stdout at the null device, so that nothing fails at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _stdin_lines() -> asyncio.Queue[list[str] | None]:
    """Stream stdin's lines, without their line ending, into a queue: a list
    of lines for each read, then None at the end.

    A daemon thread does the reading, so this works for a pipe, a file or a
    terminal alike, and never keeps the process alive once the loop is done.
    """
    import asyncio
    import threading

    queue: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()
    threading.Thread(
        target=_read_stdin, args=(loop, queue), name="tidings-stdin", daemon=True
    ).start()
    return queue


def _read_stdin(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[list[str] | None]
) -> None:
    """Thread body of :func:`_stdin_lines`."""
    import asyncio

    def put(item: list[str] | None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    pending = b""
    try:
        while chunk := _read_stdin_chunk():
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                put([_decode(line) for line in lines])
        if pending:
            put([_decode(pending)])
        put(None)
    except Exception:  # the loop is gone: nobody is listening any more
        return


def _read_stdin_chunk() -> bytes:
    """Read what stdin has; an error, or no stdin at all, counts as its end.

    os.read, not sys.stdin: the lock of a buffered reader, held by a daemon
    thread blocked in a read, can abort the interpreter's shutdown.
    """
    import os

    try:
        return os.read(0, 65536)
    except OSError:
        return b""


def _decode(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")
