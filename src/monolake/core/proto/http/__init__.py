"""Version-neutral HTTP messages: ``Request``, ``Response`` and ``Headers``, shared by the HTTP/1.1 and
HTTP/2 codecs, the drivers, the client and the proxy (bodies are ``core._body.Body`` streams)."""

from ._message import Headers as Headers
from ._message import Request as Request
from ._message import Response as Response

__all__ = ["Headers", "Request", "Response"]
