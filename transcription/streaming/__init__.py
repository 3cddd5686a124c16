"""The frame path: a WebSocket session from its handshake to its close."""
