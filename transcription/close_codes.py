"""The WebSocket close codes the server sends (docs/protocol.md §6), for every layer."""

from typing import Final

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013
