"""The WebSocket close codes the server sends (docs/protocol.md §6), for every layer."""

from typing import Final

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013

# The codes docs/protocol.md §6 documents: the ones above, and 1006 (a connection
# that dropped without a close frame, which a client sees and reports). A client that
# leaves may send any other (3000-4999 are free for applications): it is stored as
# sent, but metrics and the admin's filter show all of them as one group, OTHER, so
# that no client can mint a label or a filter option.
DOCUMENTED: Final = frozenset(
    {
        CLOSE_NORMAL,
        CLOSE_GOING_AWAY,
        1006,
        CLOSE_POLICY,
        CLOSE_TOO_BIG,
        CLOSE_SERVER_ERROR,
        CLOSE_TRY_AGAIN,
    }
)
OTHER: Final = "other"


def close_code_group(code: int | None) -> str:
    """A close code as a label: the code itself if documented, else OTHER ("" for
    none)."""
    if code is None:
        return ""
    return str(code) if code in DOCUMENTED else OTHER
