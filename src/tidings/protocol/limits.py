"""Default limits, named in one place.

Every limit can be changed per connection; these defaults are chosen to be
safe against a hostile peer while allowing what real applications send.
``docs/limits.md`` lists the values other libraries use beside ours.
"""

#: Largest message, after decompression, accepted by default (bytes).
MAX_MESSAGE_SIZE = 1 << 20

#: Largest HTTP head (request line or status line plus headers) accepted.
MAX_HEAD_SIZE = 8192

#: Most header lines accepted in an HTTP head.
MAX_HEADERS = 128

# The asyncio layer's limits live here too, so that every default is in one
# place; this module holds numbers only and does no I/O.

#: Messages received but not yet read before reading from the socket pauses.
MAX_QUEUE = 16

#: Bytes buffered for writing before ``send`` waits (the high-water mark;
#: the low-water mark is a quarter of it).
WRITE_LIMIT = 64 * 1024

#: Seconds to complete the opening handshake (TCP, TLS and HTTP).
OPEN_TIMEOUT = 10.0

#: Seconds to wait for the peer's part of the closing handshake.
CLOSE_TIMEOUT = 10.0

#: Seconds between keepalive pings, and to wait for each one's pong.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
