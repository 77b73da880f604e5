"""The ASGI proxy path: forward, stream, fail over, refuse."""
