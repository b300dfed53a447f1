"""HTTP → Thrift gateway: routes answered from a Thrift service described by an annotated IDL."""

from ._convert import Compiler as Compiler
from ._convert import Invalid as Invalid
from ._gateway import GatewayHandler as GatewayHandler
from ._gateway import GatewayMethod as GatewayMethod
from ._gateway import load_methods as load_methods
from ._gateway import make_gateway as make_gateway
