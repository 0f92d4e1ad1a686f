"""tidings: a WebSocket toolkit and real-time messaging hub for Python."""

__version__ = "0.1.0"
