"""Watch the config file with inotify (Linux), for ``[runtime] watch_config = true``.

A small ctypes binding rather than a library: the supervisor is a poll loop, and
an inotify descriptor is one more fd in its poll set (no thread, no polling).

The *directory* is watched, not the file: editors and config tools replace a
file by writing a temporary one and renaming it over the original (a new inode),
and Kubernetes swaps a ``..data`` symlink. Every create, close-after-write or
rename in the directory that names the file (or, when the path is a symlink, any
rename or create there) marks the file as possibly changed; the supervisor waits
for ``DEBOUNCE`` seconds of quiet (editors write in bursts) and then reloads only if
the file's bytes differ from the last ones it loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import struct
import sys

DEBOUNCE = 0.25
"""Seconds without a new event before a changed file is reloaded."""
DEBOUNCE_MAX = 2.0
"""A steady stream of events still reloads this long after the first one."""

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")


def file_digest(path: str) -> str | None:
    """sha256 of the file's bytes, or None if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """An inotify descriptor watching the directory of ``path``.

    Raises OSError if inotify is unavailable (not Linux, or out of watches).
    """

    def __init__(self, path: str) -> None:
        if sys.platform != "linux":
            raise OSError(errno.ENOSYS, "inotify needs Linux")
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.name = os.path.basename(self.path).encode()
        self.symlink = os.path.islink(self.path)
        # dlopen(NULL): the C library the interpreter already has. Not ctypes.util.find_library, which
        # runs ldconfig in a subprocess: from a thread (the discovery hub) while the supervisor forks a
        # worker, the worker inherited the subprocess's exec-check pipe and the watcher hung until it exited.
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        try:
            self._watch()
        except BaseException:
            os.close(fd)
            raise

    def _watch(self) -> None:
        if self._add_watch(self.fd, os.fsencode(self.directory), _MASK) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {self.directory}: {os.strerror(err)}")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bool:
        """Consume pending events; True if one may concern the config file."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return hit
            if not data:
                return hit
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    hit = True
                elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    # The directory itself went away or moved: watch its path again if it exists.
                    hit = True
                    with contextlib.suppress(OSError):
                        self._watch()
                elif name == self.name or (self.symlink and mask & (IN_MOVED_TO | IN_CREATE)):
                    hit = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
