"""Server drivers: protocols that run a service per request."""

from ..errors import Overloaded as Overloaded  # defined in errors.py; re-exported for compatibility
from ._http import HttpConnection as HttpConnection
from ._http import HttpServerApp as HttpServerApp
from ._http import error_response as error_response
from ._http import status_for as status_for
