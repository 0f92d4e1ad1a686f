"""The apps benchmarks/mount.py serves under uvicorn (``--factory``): the
hub of the hub rows mounted into a Starlette app at /realtime, as
docs/asgi.md mounts it, and python-socketio's ``ASGIApp`` around the
``AsyncServer`` of the hub rows."""

from __future__ import annotations

import importlib
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from tidings.hub import Hub

from .harness.servers import hub_config, socketio_hub
from .mount import MOUNT


def hub_app() -> Starlette:
    """The hub of the hub rows (memory broker) at /realtime, started and
    stopped by the app's lifespan."""
    hub = Hub(hub_config())
    return Starlette(lifespan=hub.lifespan, routes=[Mount(MOUNT, hub.asgi())])


def socketio_app() -> Any:
    """python-socketio's ``ASGIApp`` (at /socket.io/) around the hub rows'
    ``AsyncServer``."""
    sio, _ = socketio_hub()
    return importlib.import_module("socketio").ASGIApp(sio)
