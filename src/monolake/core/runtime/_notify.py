"""systemd's notification protocol (``Type=notify``): one datagram per state change.

When systemd (or anything speaking its protocol) starts us with ``NOTIFY_SOCKET`` set, the
supervisor tells it ``READY=1`` once every worker serves, ``RELOADING=1`` (with
``MONOTONIC_USEC``, as ``Type=notify-reload`` wants) when a reload starts and ``READY=1``
when it ends, ``STOPPING=1`` when it starts draining, and a human-readable ``STATUS=`` line
with each. The socket is a Unix datagram socket; a path starting with "@" is in the abstract
namespace. Without ``NOTIFY_SOCKET`` nothing is sent. A failed send is logged once, never
raised: the service must not stop serving because its supervisor's socket went away.

The variable is left in the environment: workers never notify, only the supervisor does,
and a binary upgrade's new supervisor (``MAINPID=`` says who it is) needs it too.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("monolake")

_warned = False


def notify(*fields: str) -> bool:
    """Send ``fields`` ("READY=1", "STATUS=...") to ``$NOTIFY_SOCKET``. True if sent."""
    global _warned
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), addr)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot notify the service manager at %s: %s", path, exc.strerror or exc)
        return False
    return True


def reloading(status: str) -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")
