"""HTTP/1.1 codec around httptools (llhttp): bytes in, messages out, no I/O."""

from ..http import Headers as Headers
from ..http import Request as Request
from ..http import Response as Response
