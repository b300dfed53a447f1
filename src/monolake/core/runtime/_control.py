"""Control channels: small JSON messages, with file descriptors, over a Unix stream socket.

One channel joins the supervisor and each worker (a ``socketpair`` made before
the fork), and one joins an old and a new supervisor during a binary upgrade.
Neither end may block on the other: the supervisor is a single-threaded poll loop
and a worker's loop serves traffic, so both ends are nonblocking. ``send`` queues
and writes what the socket takes; ``flush`` writes the rest when the socket is
writable (``wants_write``); ``receive`` reads what is there and returns the
complete messages.

Framing: a 4-byte big-endian length, then a JSON object. A message that carries
descriptors says how many (``"nfds": n``); they travel as SCM_RIGHTS ancillary data
on the first byte of that message's frame, so by the time its last byte is read
they are queued here and the message takes them in order. Received descriptors
are close-on-exec (MSG_CMSG_CLOEXEC). At most ``MAX_FDS`` ride one message.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
from collections import deque
from typing import Any

MAX_FDS = 250
"""Per message; the kernel's SCM_MAX_FD is 253."""
_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 64 << 20
_ANC = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

Message = dict[str, Any]


class ChannelClosed(Exception):
    """The peer closed its end (or the socket failed)."""


class Channel:
    """One end of a control socket. Not thread-safe; owned by one loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._in = bytearray()
        self._fds: deque[int] = deque()
        self._out: deque[tuple[memoryview, list[int]]] = deque()
        self._early: deque[tuple[Message, list[int]]] = deque()
        """Messages read by ``receive_blocking`` beyond the one it returned."""
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ----------------------------------------------------------------------

    def send(self, msg: Message, fds: list[int] | None = None) -> None:
        """Queue ``msg`` (and ``fds``, duplicated by the kernel on send) and write what the
        socket takes now. The descriptors must stay open until the message is flushed.

        Raises ChannelClosed if the peer is gone.
        """
        fds = list(fds or ())
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message")
        body = json.dumps({**msg, "nfds": len(fds)}, separators=(",", ":")).encode()
        self._out.append((memoryview(_HEADER.pack(len(body)) + body), fds))
        self.flush()

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        """Write queued frames until the socket would block. Raises ChannelClosed."""
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    n = self.sock.sendmsg([data], anc)
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close()
                raise ChannelClosed(str(exc)) from None
            if n == len(data):
                self._out.popleft()
            else:
                # The descriptors went with the first byte; the rest goes without them.
                self._out[0] = (data[n:], [])

    # -- receiving --------------------------------------------------------------------

    def receive(self) -> list[tuple[Message, list[int]]]:
        """Read what is available; return the complete messages with their descriptors
        (the caller owns them). Raises ChannelClosed at EOF once nothing complete is left."""
        eof = False
        while True:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(1 << 16, _ANC, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                eof = True
                break
            self._in += data
        out = [*self._early, *self._parse()]
        self._early.clear()
        if eof and not out:
            self.close()
            raise ChannelClosed("peer closed the control channel")
        if eof:
            self.closed = True
        return out

    def _parse(self) -> list[tuple[Message, list[int]]]:
        out: list[tuple[Message, list[int]]] = []
        while len(self._in) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._in)
            if size > _MAX_MESSAGE:
                self.close()
                raise ChannelClosed(f"oversized control message ({size} bytes)")
            if len(self._in) < _HEADER.size + size:
                break
            msg = json.loads(bytes(self._in[_HEADER.size : _HEADER.size + size]))
            del self._in[: _HEADER.size + size]
            n = int(msg.pop("nfds", 0))
            fds = [self._fds.popleft() for _ in range(min(n, len(self._fds)))]
            out.append((msg, fds))
        return out

    def receive_blocking(self, timeout: float) -> tuple[Message, list[int]]:
        """Wait up to ``timeout`` seconds for one message (for a process with no loop yet).

        Raises ChannelClosed, or TimeoutError.
        """
        import select
        import time

        deadline = time.monotonic() + timeout
        self._early.extend(self._parse())
        while not self._early:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no control message in time")
            select.select([self.sock], [], [], left)
            self._early.extend(self.receive())
        return self._early.popleft()

    def close(self) -> None:
        if not self.closed or self.sock.fileno() >= 0:
            self.closed = True
            self.sock.close()
        close_fds(list(self._fds))
        self._fds.clear()
        for _msg, fds in self._early:
            close_fds(fds)
        self._early.clear()
        self._out.clear()


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def channel_pair() -> tuple[Channel, socket.socket]:
    """A connected pair: the parent's Channel and the child's raw socket (inheritable by fork)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(parent), child
