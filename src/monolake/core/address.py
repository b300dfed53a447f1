"""Listener and endpoint addresses, parsed once from their text spellings.

Core types: the runtime binds ``ListenAddress``es and the client connects to ``Endpoint``s. The config's
``{type, value}`` tables are accepted as any object with ``type`` and ``value`` attributes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol


class AddressSpec(Protocol):
    """The seed project's ``{type = "socket" | "unix" | "uri", value = "..."}`` spelling."""

    @property
    def type(self) -> str: ...

    @property
    def value(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """Where a server listens: TCP ``host:port`` or a Unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One upstream endpoint. ``key`` identifies its connection pool."""

    scheme: str = "http"
    host: str = ""
    port: int = 0
    path: str = ""
    weight: int = 1
    tls: Any = field(default=None, compare=False, repr=False)
    """The client TLS settings (``monolake.core.tls.ClientTls``) of an https endpoint; None: the defaults."""
    meta: Any = field(default=None, compare=False, repr=False)
    """What discovery knows of it (``{"zone": ..., "tags": [...]}``), for filters and admin pages; None: nothing."""

    key: tuple[str, str, int, str] = field(init=False, compare=False, repr=False)
    """Its pool key, made once here: the pool reads it for every request (a property ran
    Python code and built a tuple each time)."""

    def __post_init__(self) -> None:
        scheme = self.scheme if self.tls is None else f"{self.scheme}+{self.tls.fingerprint}"
        object.__setattr__(self, "key", (scheme, self.host, self.port, self.path))

    @property
    def authority(self) -> str:
        """What a Host header naming this endpoint says."""
        if self.path:
            return "localhost"
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"{self.host}:{self.port}"


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{what} {text!r} must look like [v6addr]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{what} {text!r} has no port (expected host:port)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r} has an invalid port {port_text!r}")
    if not host:
        raise ValueError(f"{what} {text!r} has no host")
    return host, int(port_text)


def parse_listener(spec: str | AddressSpec) -> ListenAddress:
    """Parse "host:port", "unix:/path" or {type, value}. Raises ValueError with the reason."""
    if not isinstance(spec, str):
        if spec.type == "unix":
            if not spec.value:
                raise ValueError("unix listener needs a path in 'value'")
            return ListenAddress(path=spec.value)
        spec = spec.value
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise ValueError("unix listener needs a path after 'unix:'")
        return ListenAddress(path=path)
    host, port = _split_host_port(spec, "listener")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"listener host {host!r} must be an IP address or localhost") from None
    return ListenAddress(host=host, port=port)


def parse_endpoint(spec: str | AddressSpec, weight: int = 1) -> Endpoint:
    """Parse an upstream endpoint. Raises ValueError with the reason."""
    if weight < 1:
        raise ValueError(f"weight must be >= 1, got {weight}")
    if not isinstance(spec, str):
        if spec.type == "unix":
            if not spec.value:
                raise ValueError("unix endpoint needs a path in 'value'")
            return Endpoint(path=spec.value, weight=weight)
        spec = spec.value
    if spec != spec.strip() or any(c.isspace() for c in spec):
        raise ValueError(f"endpoint {spec!r} must not contain whitespace")
    if spec.startswith("unix:"):
        if len(spec) <= 5:
            raise ValueError("unix endpoint needs a path after 'unix:'")
        return Endpoint(path=spec[5:], weight=weight)
    scheme = "http"
    rest = spec
    if "://" in spec:
        scheme, _, rest = spec.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(f"endpoint scheme {scheme!r} is not supported (use http or https)")
        rest = rest.rstrip("/")
        if "@" in rest:
            raise ValueError(f"endpoint {spec!r} must not carry user information")
        if "/" in rest:
            raise ValueError(f"endpoint {spec!r} must not carry a path")
        if ":" not in rest.rpartition("]")[2]:
            rest += ":443" if scheme == "https" else ":80"
    host, port = _split_host_port(rest, "endpoint")
    if port == 0:
        raise ValueError(f"endpoint {spec!r} has port 0")
    return Endpoint(scheme=scheme, host=host, port=port, weight=weight)
