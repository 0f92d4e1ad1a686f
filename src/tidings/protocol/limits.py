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

#: Largest body of a non-101 response kept for the error message (client).
MAX_REJECTION_BODY = 4096
