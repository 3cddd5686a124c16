"""Failed token authentications per client address, counted in this process's memory.

In memory, not in Django's cache: the check must cost nothing (no network, no database),
since its point is to make a flood of bad tokens cheap to refuse. The price: each
server process counts on its own, so N processes allow up to N times the limit.
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


@dataclass
class _Window:
    started: float
    failures: int = 0
    refused: int = 0


class FailureCounter:
    """Failures per address in a fixed window that opens at the address's first failure.

    At most `max_addresses` are tracked; beyond that the address whose last failure
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

    def record_failure(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        key = address_key(address)
        with self._lock:
            now = self.clock()
            window = self._current(key, now) or _Window(started=now)
            window.failures += 1
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_addresses:
                self._windows.popitem(last=False)

    def refuses(self, address: str, *, limit: int) -> bool:
        """True when `address` has had `limit` failures in its current window.

        The first refusal of a window logs one warning; later ones are only counted.
        """
        key = address_key(address)
        with self._lock:
            window = self._current(key, self.clock())
            if window is None or window.failures < limit:
                return False
            window.refused += 1
            if window.refused == 1:
                logger.warning(
                    "refusing token authentication from %s for up to %.0f s: "
                    "%d failed authentications (the limit is %d a minute)",
                    key,
                    self.window_seconds - (self.clock() - window.started),
                    window.failures,
                    limit,
                )
            return True

    def tracked(self) -> int:
        return len(self._windows)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


auth_failures = FailureCounter()
