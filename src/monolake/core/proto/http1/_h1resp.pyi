def scan(
    buf: bytes, pos: int, max_headers: int, max_head_bytes: int, /
) -> tuple[int, int, bytes, bytes, bytes, int, list[tuple[bytes, bytes]] | None] | None:
    """(head end, status, reason, version, block, content length or -1, or -2 for chunked, hop pairs or None),
    or None: let llhttp read it."""
