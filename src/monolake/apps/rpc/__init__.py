"""RPC frameworks (Thrift, gRPC) on the monolake runtime."""
