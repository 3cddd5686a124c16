"""Failed authentications per client address, counted in this process's memory.

In memory, not in Django's cache: the check must cost nothing (no network, no database),
since its point is to make a flood of bad attempts cheap to refuse. The price: each
server process counts on its own, so N processes allow up to N times the limit.

Every WebSocket attempt is *charged* as a failure before anything is looked up, in one
step with the check (`FailureCounter.charge`), and given back when it authenticates
(`FailureCounter.succeeded`). So attempts that start together cannot all pass the
check before any of them is counted: of 200 bad handshakes opened at once, exactly
`limit` are within the limit. What "over the limit" costs is the middleware's business
(accounts.middleware): never a valid client its access.
"""

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 10_000


def address_key(address: str) -> str:
    """What is counted for `address`: the address, or its /64 for IPv6.

    One IPv6 host usually holds a whole /64, so counting single addresses would let it
    take a fresh one per attempt.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(eq=False)
class _Window:
    started: float
    failures: int = 0  # charged attempts (those in flight too) minus the successes
    refused: int = 0  # attempts over the limit that failed


@dataclass(frozen=True, eq=False)
class Attempt:
    """One authentication attempt, charged as a failure until it succeeds."""

    key: str
    window: _Window
    over_limit: bool  # the address had `limit` failures before this attempt


class FailureCounter:
    """Failures per address in a fixed window that opens at the address's first one.

    At most `max_addresses` are tracked; beyond that the address whose last attempt
    is oldest is forgotten, so memory stays bounded whatever the clients do.
    """

    def __init__(
        self,
        *,
        window_seconds: float = WINDOW_SECONDS,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self.clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        # The middleware runs on the event loop, but sync code may count too.
        self._lock = threading.Lock()

    def _current(self, key: str, now: float) -> _Window | None:
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.window_seconds:
            del self._windows[key]
            return None
        return window

    def charge(self, address: str, *, limit: int) -> Attempt:
        """Count one attempt from `address` as a failure; over_limit when the address
        already had `limit` failures. The check and the count are one step."""
        key = address_key(address)
        with self._lock:
            now = self.clock()
            window = self._current(key, now) or _Window(started=now)
            over_limit = window.failures >= limit
            window.failures += 1
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_addresses:
                self._windows.popitem(last=False)
        return Attempt(key=key, window=window, over_limit=over_limit)

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt authenticated: it was no failure (its window may be gone)."""
        with self._lock:
            window = attempt.window
            if self._windows.get(attempt.key) is not window:
                return
            window.failures = max(window.failures - 1, 0)
            if window.failures == 0 and window.refused == 0:
                del self._windows[attempt.key]  # an address with no failures

    def refused(self, attempt: Attempt, *, limit: int) -> None:
        """An attempt over the limit failed. Logged at the 1st, 2nd, 4th, 8th… of a
        window: every one is counted in the log, in a few lines per address."""
        with self._lock:
            window = attempt.window
            window.refused += 1
            count = window.refused
            left = self.window_seconds - (self.clock() - window.started)
        if count & (count - 1) == 0:
            logger.warning(
                "throttling authentication from %s for up to %.0f s: %d failed "
                "attempts (the limit is %d a minute), %d of them refused as over it",
                attempt.key,
                max(left, 0.0),
                window.failures,
                limit,
                count,
            )

    def failures(self, address: str) -> int:
        """The failures counted for `address` in its current window."""
        key = address_key(address)
        with self._lock:
            window = self._current(key, self.clock())
            return window.failures if window is not None else 0

    def tracked(self) -> int:
        return len(self._windows)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


auth_failures = FailureCounter()
