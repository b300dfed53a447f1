"""The HTTP/2 codec interface: what the server and client drivers need from a codec.

Two codecs implement it: the pure-Python reference over the ``h2`` library
(``_h2codec.H2Codec``) and the native one over libnghttp2 (``_native.NgCodec``,
a C extension built when libnghttp2's headers are present). The drivers never
know which one they hold: ``new_codec`` picks the native codec when it imports,
unless ``MONOLAKE_H2_CODEC=h2`` (or ``kind="h2"``) asks for the reference.

The interface is small and tuple-based so that the native codec can hand events
to Python without building an object per frame:

- ``feed(data)`` takes bytes read from the socket and returns a list of events;
  it raises ``H2ConnectionError`` on a connection error (a GOAWAY is then already
  queued in ``pending()``). Stream errors become ``RESET`` events (the
  RST_STREAM is queued).
- ``pending()`` returns (and clears) the bytes to write to the socket. Callers
  call it after ``feed`` and after each batch of ``send_*`` calls.
- A message that is whole when it is sent (a unary gRPC call or answer, a small
  response) goes in one call, ``send_response`` / ``send_request``: one crossing
  into the codec and one serialization instead of one per frame.
- Outbound data is never refused: ``send_data`` queues what the flow-control
  windows do not allow yet, the codec sends it as WINDOW_UPDATEs arrive, and
  ``buffered(stream_id)`` tells how much is waiting so a driver can pause the
  producer. A ``DRAINED`` event reports that a stream's queue emptied.
- Inbound flow control is explicit: the codec does not return window for DATA
  until the driver calls ``consumed(stream_id, n)`` (after forwarding the bytes),
  so a slow consumer on the other side slows the peer down.

Events are tuples whose first item is the kind:

======================  ==============================================================
``(HEADERS, sid, headers, end_stream)``  a HEADERS block (request, response, 1xx or trailers:
                                          the driver knows which from the stream's state);
                                          headers is a list of (name, value) bytes, pseudo
                                          headers first, names lowercase
``(DATA, sid, data, end_stream)``         body bytes (``len(data)`` is what to ``consumed``;
                                          padding is accounted by the codec itself)
``(RESET, sid, error_code)``              the peer reset the stream (or the codec did)
``(DRAINED, sid)``                        everything queued for ``sid`` was sent
``(GOAWAY, last_sid, error_code)``        the peer is going away; streams above last_sid
                                          were not processed and may be retried
``(SETTINGS,)``                           the peer's settings changed (max streams etc.)
======================  ==============================================================
"""

from __future__ import annotations

from typing import Any, Final, Protocol

# Final: the compiled drivers inline these (a plain module global is a dict lookup per use).
HEADERS: Final = 1
DATA: Final = 2
RESET: Final = 3
DRAINED: Final = 4
GOAWAY: Final = 5
SETTINGS: Final = 6

# RFC 9113 §7 error codes the drivers use.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Event = tuple[Any, ...]
HeaderList = list[tuple[bytes, bytes]]


class H2ConnectionError(Exception):
    """A connection error: the codec queued a GOAWAY with ``error_code``."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class Codec(Protocol):
    """One HTTP/2 connection's framing and state. Created by ``new_codec``."""

    def initiate(self) -> None:
        """Queue the connection preface (client) or SETTINGS (server)."""

    def feed(self, data: bytes) -> list[Event]:
        """Process bytes from the peer; return the events they produced."""
        ...

    def pending(self) -> bytes:
        """Bytes to write to the peer (cleared by this call)."""
        ...

    def request(self, headers: HeaderList, end_stream: bool) -> int:
        """Client: open a stream with a request HEADERS block; return its id."""
        ...

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        """Send a response (server), 1xx, or trailers (end_stream=True) on a stream."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue body bytes; sent as flow control allows."""

    def send_response(
        self, stream_id: int, headers: HeaderList, data: bytes | None, trailers: HeaderList | None
    ) -> int:
        """Server: a whole final response at once (HEADERS, the body, the trailers; None or
        empty for none), serialized in one pass. Returns what ``buffered`` would: the body
        bytes the windows did not let out yet (a ``DRAINED`` event follows when they are)."""
        ...

    def send_request(self, headers: HeaderList, data: bytes | None, trailers: HeaderList | None) -> int:
        """Client: a whole request at once, as ``send_response``; returns the new stream's id."""
        ...

    def buffered(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` and not yet sent."""
        ...

    def consumed(self, stream_id: int, n: int) -> None:
        """The driver is done with ``n`` received DATA bytes of ``stream_id``: return window."""

    def reset(self, stream_id: int, error_code: int) -> None:
        """Send RST_STREAM and forget the stream's queued data."""

    def goaway(self, error_code: int = NO_ERROR) -> None:
        """Send GOAWAY with the last stream id this side processed."""

    def remote_max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (a large number when unset)."""
        ...

    def open_streams(self) -> int:
        """Streams currently open (not closed in both directions) on this connection."""
        ...
