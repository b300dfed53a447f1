"""Message streams (protosocket's counterpart): framed messages over TCP, Unix and TLS.

Server side: a handler (a ``Service``) called per message, ordered or concurrent,
optionally with protosocket-rpc's envelope (``Fields``); or a service called once per
``MessageConnection``. Serve it with ``StreamsApp`` and ``monolake.serve``, or from
TOML with a ``[servers.NAME.streams]`` table. Client side: ``connect`` (messages),
``connect_rpc`` and ``RpcPool`` (calls). Codecs: ``ProtobufCodec`` (varint
length-delimited, protosocket-prost's wire), ``MsgpackCodec`` (protosocket-messagepack's),
``BytesCodec``, or any object implementing ``Codec``. See docs/streams.md.
"""

from __future__ import annotations

from .apps.streams._app import StreamsApp as StreamsApp
from .apps.streams._client import CallCancelled as CallCancelled
from .apps.streams._client import RpcConnection as RpcConnection
from .apps.streams._client import RpcPool as RpcPool
from .apps.streams._codec import BytesCodec as BytesCodec
from .apps.streams._codec import Codec as Codec
from .apps.streams._codec import FrameError as FrameError
from .apps.streams._codec import MsgpackCodec as MsgpackCodec
from .apps.streams._codec import ProtobufCodec as ProtobufCodec
from .apps.streams._conn import ConnectionClosed as ConnectionClosed
from .apps.streams._conn import MessageConnection as MessageConnection
from .apps.streams._dial import connect as connect
from .apps.streams._dial import connect_rpc as connect_rpc
from .apps.streams._messages import Fields as Fields
from .apps.streams._messages import RpcMessages as RpcMessages
from .apps.streams._server import CallRecord as CallRecord
from .apps.streams._server import MessageServerApp as MessageServerApp
from .apps.streams._server import RejectCall as RejectCall
from .apps.streams._server import StreamSettings as StreamSettings

__all__ = [
    "BytesCodec",
    "CallCancelled",
    "CallRecord",
    "Codec",
    "ConnectionClosed",
    "Fields",
    "FrameError",
    "MessageConnection",
    "MessageServerApp",
    "MsgpackCodec",
    "ProtobufCodec",
    "RejectCall",
    "RpcConnection",
    "RpcMessages",
    "RpcPool",
    "StreamSettings",
    "StreamsApp",
    "connect",
    "connect_rpc",
]


def _restore_docs() -> None:
    from .core import _compiled

    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            _compiled.restore_doc(obj)  # compiled (mypyc): its docstring is in the source only


_restore_docs()
