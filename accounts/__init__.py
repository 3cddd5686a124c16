"""User accounts and the API tokens that authenticate WebSocket clients."""
