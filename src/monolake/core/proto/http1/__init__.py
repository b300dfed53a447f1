"""HTTP/1.1 codec around httptools (llhttp): bytes in, messages out, no I/O."""

from ._message import Headers as Headers
from ._message import Request as Request
from ._message import Response as Response
