"""Server drivers: protocols that run a service per request."""

from ._http import HttpConnection as HttpConnection
from ._http import HttpServerApp as HttpServerApp
from ._http import Overloaded as Overloaded
from ._http import error_response as error_response
from ._http import status_for as status_for
