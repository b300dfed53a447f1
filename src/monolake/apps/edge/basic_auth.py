"""HTTP Basic authentication (RFC 7617) against an htpasswd file: bcrypt and {SHA} entries.

Built-in ``basic_auth`` (``BasicAuth``; settings ``BasicAuthArgs``).

The file is Apache's format, one ``user:hash`` a line (``#`` comments and blank lines
skipped): ``$2y$``/``$2b$``/``$2a$`` bcrypt hashes (``htpasswd -B``) or ``{SHA}`` base64
SHA-1 (``htpasswd -s``; weak, for old files). Any other hash (MD5 ``$apr1$``, crypt) is
a config error naming the line. The file is read when the filter is built (so a
config reload rereads it) and again whenever it changed: its identity (inode, size,
mtime) is looked at most once per ``check_interval`` seconds, from the request's own
clock; a file that no longer parses keeps the users already loaded and logs an error.

bcrypt is slow on purpose (tens of ms at cost 10), so answers are cached per
``Authorization`` value, bounded by ``cache_size`` and emptied when the file changes: a
client sending the same credentials pays one bcrypt, then a dict lookup. With
``threads`` (the default) a bcrypt check runs in the loop's default thread pool
(bcrypt releases the GIL), so the worker serves other requests meanwhile; the filter is
then ``async`` (``BasicAuthThreaded``), though a cached answer or a {SHA} entry never
waits. ``threads = false`` checks inline, blocking the worker for each bcrypt.

A passing request has its ``Authorization`` header removed (``strip_credentials``) and
the user name put in ``user_header`` when one is given (any copy the client sent is
removed first). A failing one gets 401 with ``WWW-Authenticate: Basic realm="..."``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from typing import Any

import msgspec

from ...core.proto.http1 import Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._shared import ArgError, answer, settings_of

log = logging.getLogger("monolake.edge.basic_auth")

_BCRYPT = (b"$2y$", b"$2b$", b"$2a$")


def parse_htpasswd(data: bytes, path: str) -> dict[bytes, bytes]:
    """User -> hash. Raises ValueError naming ``path:line`` for what it cannot check."""
    users: dict[bytes, bytes] = {}
    for n, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not user or not hashed:
            raise ValueError(f"{path}:{n}: not a user:hash line")
        if hashed.startswith(_BCRYPT):
            try:
                import bcrypt  # noqa: F401
            except ImportError:
                raise ValueError(
                    f"{path}:{n}: bcrypt hashes need the bcrypt package: pip install 'monolake[edge]'"
                ) from None
        elif hashed.startswith(b"{SHA}"):
            try:
                if len(base64.b64decode(hashed[5:], validate=True)) != 20:
                    raise ValueError
            except (ValueError, binascii.Error):
                raise ValueError(f"{path}:{n}: {{SHA}} hash is not base64 of 20 bytes") from None
        else:
            kind = hashed.split(b"$")[1].decode("latin-1", "replace") if hashed.startswith(b"$") else "plain/crypt"
            raise ValueError(
                f"{path}:{n}: user {user.decode('latin-1')!r}: hash type {kind!r} not supported (bcrypt or {{SHA}})"
            )
        users[user] = hashed
    return users


def check_password(password: bytes, hashed: bytes) -> bool:
    if hashed.startswith(b"{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(digest, hashed[5:])
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


def _stat(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BasicAuthArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``basic_auth`` (``BasicAuth``)."""

    file: str
    """The htpasswd file (bcrypt or {SHA} entries); relative to the working directory."""
    realm: str = "monolake"
    """The ``realm`` of the 401's ``WWW-Authenticate``."""
    user_header: str | None = None
    """A request header to put the user name in (the client's copies are removed)."""
    strip_credentials: bool = True
    """Remove ``Authorization`` from a request that passed."""
    check_interval: float = 1.0
    """Seconds between looks at whether the file changed (0: only when the config is reloaded)."""
    cache_size: int = 10_000
    """Answers remembered per Authorization value (bcrypt is slow)."""
    threads: bool = True
    """Run bcrypt checks in a thread, the worker serving on meanwhile (the filter is then async)."""


class BasicAuth(HttpFilter):
    """Checks ``Authorization: Basic`` credentials against the htpasswd ``file``."""

    Args = BasicAuthArgs

    def __new__(cls, args: BasicAuthArgs | None = None, /, **kwargs: Any) -> BasicAuth:
        threads = args.threads if args is not None else kwargs.get("threads", True)
        if cls is BasicAuth and threads:
            return super().__new__(BasicAuthThreaded)
        return super().__new__(cls)

    def __init__(self, args: BasicAuthArgs | None = None, /, **kwargs: Any) -> None:
        a = settings_of(BasicAuthArgs, args, kwargs)
        self.path = a.file
        try:
            self.ident = _stat(a.file)
            with open(a.file, "rb") as f:
                self.users = parse_htpasswd(f.read(), a.file)
        except OSError as exc:
            raise ArgError("file", f"cannot read {a.file}: {exc.strerror}") from None
        except ValueError as exc:
            raise ArgError("file", str(exc)) from None
        if a.check_interval < 0:
            raise ArgError("check_interval", f"must be >= 0 seconds (0: reloads only), got {a.check_interval!r}")
        if a.cache_size < 0:
            raise ArgError("cache_size", f"must be >= 0, got {a.cache_size!r}")
        if any(c in a.realm for c in '"\\\r\n'):
            raise ArgError("realm", f"must not contain quotes, backslashes or line breaks, got {a.realm!r}")
        if a.user_header is not None and (not a.user_header or any(c in a.user_header for c in " :\r\n")):
            raise ArgError("user_header", f"not a header name: {a.user_header!r}")
        self.interval = float(a.check_interval)
        self.checked = float("-inf")
        self.cache_size = a.cache_size
        self.cache: dict[bytes, bytes | None] = {}
        """Authorization value -> user (None: refused)."""
        self.user_header = a.user_header.encode("latin-1") if a.user_header else None
        self.strip = a.strip_credentials
        self.challenge = [(b"WWW-Authenticate", f'Basic realm="{a.realm}", charset="UTF-8"'.encode())]

    def reload_if_changed(self) -> None:
        try:
            ident = _stat(self.path)
            if ident == self.ident:
                return
            with open(self.path, "rb") as f:
                users = parse_htpasswd(f.read(), self.path)
        except (OSError, ValueError) as exc:
            log.error("basic auth: keeping %d users, cannot reload %s: %s", len(self.users), self.path, exc)
            return
        self.ident, self.users = ident, users
        self.cache.clear()
        log.info("basic auth: %s reloaded, %d users", self.path, len(users))

    def credentials(self, value: bytes) -> tuple[bytes, bytes, bytes] | None:
        """(user, password, the user's hash) from an Authorization value; None if malformed or unknown."""
        scheme, _, encoded = value.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (ValueError, binascii.Error):
            return None
        hashed = self.users.get(user) if sep else None
        return None if hashed is None else (user, password, hashed)

    def user_of(self, value: bytes) -> bytes | None:
        creds = self.credentials(value)
        return creds[0] if creds is not None and check_password(creds[1], creds[2]) else None

    def remember(self, value: bytes, user: bytes | None) -> None:
        if self.cache_size:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[value] = user

    def accept(self, req: Request, user: bytes) -> None:
        if self.strip:
            req.headers.remove(b"authorization")
        if self.user_header is not None:
            req.headers.set(self.user_header, user)

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        if self.interval and ctx.start - self.checked >= self.interval:
            self.checked = ctx.start
            self.reload_if_changed()
        headers = req.headers
        value = headers.get(b"authorization")
        if value is None:
            return answer(401, b"credentials required\n", self.challenge)
        cache = self.cache
        if value in cache:
            user = cache[value]
        else:
            user = self.user_of(value)
            self.remember(value, user)
        if user is None:
            return answer(401, b"unauthorized\n", self.challenge)
        self.accept(req, user)
        return None

    def statistics(self) -> dict[str, Any]:
        return {"users": len(self.users), "cached": len(self.cache)}


class BasicAuthThreaded(BasicAuth):
    """``BasicAuth`` with ``threads = true``: bcrypt checks in the loop's thread pool (async filter)."""

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:  # type: ignore[override]
        if self.interval and ctx.start - self.checked >= self.interval:
            self.checked = ctx.start
            self.reload_if_changed()
        value = req.headers.get(b"authorization")
        if value is None:
            return answer(401, b"credentials required\n", self.challenge)
        if value in self.cache:
            user = self.cache[value]
        else:
            creds = self.credentials(value)
            if creds is None:
                user = None
            elif creds[2].startswith(_BCRYPT):
                users = self.users
                loop = asyncio.get_running_loop()
                ok = await loop.run_in_executor(None, check_password, creds[1], creds[2])
                user = creds[0] if ok else None
                if self.users is not users:  # the file changed meanwhile: answer, but remember nothing
                    return self._answer(req, user)
            else:
                user = creds[0] if check_password(creds[1], creds[2]) else None
            self.remember(value, user)
        return self._answer(req, user)

    def _answer(self, req: Request, user: bytes | None) -> Response | None:
        if user is None:
            return answer(401, b"unauthorized\n", self.challenge)
        self.accept(req, user)
        return None
