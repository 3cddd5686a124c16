"""Real-time transcription sessions: the WebSocket protocol, engines and records."""
