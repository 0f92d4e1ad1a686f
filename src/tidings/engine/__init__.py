"""The asyncio layer on the protocol core: the connection (:class:`WebSocket`),
the server and the client, broadcast, plain HTTP beside the upgrade, and the
event loop. ``tidings.serve``, ``tidings.connect`` and ``tidings.broadcast``
are its public names (DESIGN: the protocol core below does no I/O; the hub
above is an application of this layer)."""
