"""Server drivers: protocols that run a service per request."""

from ..errors import Overloaded as Overloaded  # defined in errors.py; re-exported for compatibility
from ._answers import error_response as error_response
from ._answers import status_for as status_for
from ._http import HttpConnection as HttpConnection
from ._http import HttpServerApp as HttpServerApp
