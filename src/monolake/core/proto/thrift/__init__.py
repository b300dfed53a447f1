"""Thrift framing and message heads, without I/O: framed, TTHeader, THeader; binary and compact."""

from ._frame import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from ._frame import Frame as Frame
from ._frame import FrameReader as FrameReader
from ._frame import FrameTooLarge as FrameTooLarge
from ._frame import HeaderInfo as HeaderInfo
from ._frame import Transport as Transport
from ._frame import classify as classify
from ._frame import encode_frame as encode_frame
from ._frame import encode_framed as encode_framed
from ._frame import encode_theader as encode_theader
from ._frame import encode_ttheader as encode_ttheader
from ._frame import read_header_info as read_header_info
from ._frame import rewrite_seq_id as rewrite_seq_id
from ._message import AppError as AppError
from ._message import MessageHead as MessageHead
from ._message import MessageType as MessageType
from ._message import ThriftProtocol as ThriftProtocol
from ._message import application_exception as application_exception
from ._message import encode_seq_id as encode_seq_id
from ._message import encode_varint as encode_varint
from ._message import message_begin as message_begin
from ._message import parse_application_exception as parse_application_exception
from ._message import peek_message as peek_message
