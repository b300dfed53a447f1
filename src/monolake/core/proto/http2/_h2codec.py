"""The reference HTTP/2 codec: the ``Codec`` interface over the pure-Python ``h2`` library.

It is the oracle the native codec is tested against and the fallback where the
native one is not built. What it adds to ``h2``: per-stream queues for data the
flow-control windows do not allow yet (``h2`` refuses such writes), trailers and
END_STREAM held until a stream's queue drains, padding returned to the peer at
once, and ``h2``'s event objects flattened into the interface's tuples.
"""

from __future__ import annotations

import contextlib
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.exceptions
import hyperframe.frame

from ._codec import (
    DATA,
    DRAINED,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PROTOCOL_ERROR,
    RESET,
    SETTINGS,
    Event,
    H2ConnectionError,
    HeaderList,
)

_HEADER_EVENTS = (
    h2.events.RequestReceived,
    h2.events.ResponseReceived,
    h2.events.TrailersReceived,
)

_MALFORMED = (h2.exceptions.ProtocolError, h2.exceptions.InvalidBodyLengthError)
"""h2's errors for a malformed message (invalid fields, content-length), not for framing."""
_STREAM_FRAMES = (hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame)


class _Outbound:
    """Data waiting for window on one stream, and what ends the stream after it."""

    __slots__ = ("chunks", "end", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: HeaderList | None = None


class H2Codec:
    """One connection's HTTP/2 state over ``h2.connection.H2Connection``."""

    def __init__(
        self,
        client_side: bool,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = 1 << 20,
        max_frame_size: int = 16384,
        max_header_list_size: int = 65536,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            },
        )
        # Settings given at construction are current at once, so h2 never "applies" them on
        # the peer's ACK: set the limits they imply on the decoder and framer here.
        conn.decoder.max_header_list_size = max_header_list_size
        conn.max_inbound_frame_size = max_frame_size
        self._conn = conn
        self._window = initial_window_size
        self._streams = max_concurrent_streams
        self._out: dict[int, _Outbound] = {}

    # -- connection ------------------------------------------------------------

    def initiate(self) -> None:
        self._conn.initiate_connection()
        # The connection window is room for every stream's window at once, so a stream
        # whose consumer paused (holding its own window) never stalls the others.
        extra = min(self._window * max(1, self._streams), 2**31 - 1) - 65535
        if extra > 0:
            self._conn.increment_flow_control_window(extra)

    def feed(self, data: bytes) -> list[Event]:
        conn = self._conn
        out: list[Event] = []
        # h2's receive_data turns every error into a connection error; RFC 9113 §8.1.1 makes a
        # malformed request or response a stream error (PROTOCOL_ERROR), as libnghttp2 does.
        # So frames are handed to h2 one at a time and a malformed stream is reset alone.
        events: list[h2.events.Event | Event] = []
        buf = conn.incoming_buffer
        try:
            buf.add_data(data)  # checks the client preface
            buf.max_frame_size = conn.max_inbound_frame_size
            for frame in buf:
                try:
                    events.extend(conn._receive_frame(frame))
                except h2.exceptions.ProtocolError as exc:
                    if not self._stream_error(frame, exc):
                        raise
                    sid = frame.stream_id
                    self.reset(sid, PROTOCOL_ERROR)
                    events.append((RESET, sid, PROTOCOL_ERROR))  # in order with the others
        except h2.exceptions.ProtocolError as exc:
            # As h2's receive_data does: queue the GOAWAY, then report.
            conn._terminate_connection(exc.error_code)
            raise H2ConnectionError(int(exc.error_code), str(exc) or type(exc).__name__) from None
        except hyperframe.exceptions.InvalidPaddingError:
            conn._terminate_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise H2ConnectionError(PROTOCOL_ERROR, "frame with invalid padding") from None
        for ev in events:
            if isinstance(ev, tuple):
                out.append(ev)
            elif isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                data_ = ev.data
                padding = ev.flow_controlled_length - len(data_)
                if padding:
                    self._conn.acknowledge_received_data(padding, sid)
                out.append((DATA, sid, data_, ev.stream_ended is not None))
            elif isinstance(ev, _HEADER_EVENTS):
                out.append((HEADERS, ev.stream_id, list(ev.headers), ev.stream_ended is not None))
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                out.append((HEADERS, ev.stream_id, list(ev.headers), False))
            elif isinstance(ev, h2.events.StreamReset):
                self._out.pop(ev.stream_id, None)
                out.append((RESET, ev.stream_id, int(ev.error_code)))
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id == 0:
                    self._flush_all(out)
                elif ev.stream_id in self._out:
                    self._flush(ev.stream_id, out)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self._flush_all(out)
                out.append((SETTINGS,))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out.append((GOAWAY, ev.last_stream_id or 0, int(ev.error_code or 0)))
        return out

    def _stream_error(self, frame: hyperframe.frame.Frame, exc: h2.exceptions.ProtocolError) -> bool:
        """Whether ``exc``, raised by ``frame``, is a malformed message on a stream that is
        still open (a stream error) rather than a connection error. Plain ``ProtocolError``
        is what h2 raises for invalid fields and bad content-length; its subclasses (frame
        size, flow control, stream ids, too many streams) stay connection errors."""
        if type(exc) not in _MALFORMED or not isinstance(frame, _STREAM_FRAMES):
            return False
        stream = self._conn.streams.get(frame.stream_id)
        if stream is None or stream.closed:
            return False
        if isinstance(frame, hyperframe.frame.DataFrame):
            # Counted against the connection window before h2 failed the stream: return it.
            self._conn.acknowledge_received_data(frame.flow_controlled_length, frame.stream_id)
        return True

    def pending(self) -> bytes:
        return self._conn.data_to_send()

    def goaway(self, error_code: int = NO_ERROR) -> None:
        if error_code == NO_ERROR:
            # Graceful (a drain): h2's close_connection() moves it to CLOSED, where the
            # streams in flight could not be answered any more (RFC 9113 §6.8 wants them
            # finished), so the frame is queued without that state change.
            conn = self._conn
            frame = hyperframe.frame.GoAwayFrame(0, last_stream_id=conn.highest_inbound_stream_id or 0, error_code=0)
            conn._prepare_for_sending([frame])
            return
        self._conn.close_connection(error_code=error_code)

    def remote_max_streams(self) -> int:
        return int(self._conn.remote_settings.max_concurrent_streams)

    def open_streams(self) -> int:
        return int(self._conn.open_outbound_streams + self._conn.open_inbound_streams)

    # -- streams ---------------------------------------------------------------

    def request(self, headers: HeaderList, end_stream: bool) -> int:
        sid = int(self._conn.get_next_available_stream_id())
        self._conn.send_headers(sid, headers, end_stream=end_stream)
        return sid

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        q = self._out.get(stream_id)
        if q is not None and end_stream:
            q.trailers = headers  # after the queued data
            return
        # A stream the peer reset: the driver sees (or saw) the RESET event.
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        q = self._out.get(stream_id)
        if q is None:
            q = self._out[stream_id] = _Outbound()
        if data:
            q.chunks.append(data)
            q.size += len(data)
        if end_stream:
            q.end = True
        self._flush(stream_id, None)

    def send_response(
        self, stream_id: int, headers: HeaderList, data: bytes | None, trailers: HeaderList | None
    ) -> int:
        if not data and not trailers:
            self.send_headers(stream_id, headers, True)
            return 0
        self.send_headers(stream_id, headers, False)
        return self._send_whole(stream_id, data, trailers)

    def send_request(self, headers: HeaderList, data: bytes | None, trailers: HeaderList | None) -> int:
        if not data and not trailers:
            return self.request(headers, True)
        sid = self.request(headers, False)
        self._send_whole(sid, data, trailers)
        return sid

    def _send_whole(self, stream_id: int, data: bytes | None, trailers: HeaderList | None) -> int:
        if trailers:
            if data:
                self.send_data(stream_id, data, False)
            self.send_headers(stream_id, list(trailers), True)  # behind the data still queued
            return self.buffered(stream_id)
        self.send_data(stream_id, data or b"", True)
        return self.buffered(stream_id)

    def buffered(self, stream_id: int) -> int:
        q = self._out.get(stream_id)
        return q.size if q is not None else 0

    def consumed(self, stream_id: int, n: int) -> None:
        if n > 0:
            self._conn.acknowledge_received_data(n, stream_id)

    def reset(self, stream_id: int, error_code: int) -> None:
        self._out.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # closed: nothing to reset
            self._conn.reset_stream(stream_id, error_code)

    # -- outbound flow control ---------------------------------------------------

    def _flush_all(self, events: list[Event] | None) -> None:
        for sid in list(self._out):
            self._flush(sid, events)

    def _flush(self, sid: int, events: list[Event] | None) -> None:
        """Send what the windows allow from ``sid``'s queue; finish the stream when it empties.

        ``events`` is where a DRAINED event goes when the queue empties during ``feed``;
        None when called from ``send_data`` (the driver knows it just wrote).
        """
        q = self._out[sid]
        conn = self._conn
        chunks = q.chunks
        try:
            while chunks:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    return
                frame = conn.max_outbound_frame_size
                chunk = chunks[0]
                n = min(window, len(chunk))
                if n < len(chunk):
                    chunks[0] = chunk[n:]
                    chunk = chunk[:n]
                else:
                    chunks.popleft()
                q.size -= n
                for i in range(0, n, frame):
                    conn.send_data(sid, chunk[i : i + frame])
            del self._out[sid]
            if q.trailers is not None:
                conn.send_headers(sid, q.trailers, end_stream=True)
            elif q.end:
                conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            self._out.pop(sid, None)
            return
        if events is not None:
            events.append((DRAINED, sid))
