"""Message streams: framed messages over TCP, Unix and TLS, and protosocket-rpc's RPC layer.

The public names are re-exported by ``monolake.streams``.
"""
