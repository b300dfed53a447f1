Head = tuple[
    int,  # where the head ends (after its empty line)
    bytes,  # method
    bytes,  # target
    bytes,  # version: b"1.1" or b"1.0"
    list[tuple[bytes, bytes]],  # end-to-end fields (name as sent, value), Host included
    list[bytes],  # their lowercased names
    list[tuple[bytes, bytes]] | None,  # hop-by-hop fields (lowercased name, value), or None
    bytes | None,  # Host's value
    bytes,  # Host's host part lowercased, b"" without Host (HTTP/1.0)
    int,  # Content-Length, -1 without one
    bool,  # Expect: 100-continue
]

def scan_head(buf: bytes, pos: int, max_line: int, max_head: int, max_fields: int, /) -> Head | None: ...
def request_head(method: bytes, target: bytes, pairs: list[tuple[bytes, bytes]], framing: bytes, /) -> bytes | None: ...
