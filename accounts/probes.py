"""Token checks for attempts over the failed-attempt limit: batched, one query each.

An address over AUTH_FAILURES_PER_MINUTE may still hold valid tokens (behind a NAT or
a proxy, many clients share one address), so its token attempts are still checked,
but together: the attempts that wait at one moment are checked in one query on the
prefix index (`selectors.api_token_digests`), one query at a time per process. A flood
of bad tokens costs the database one query per batch, whatever its size, and never a
write; a token that matches is then authenticated as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from channels.db import database_sync_to_async

from accounts import selectors
from accounts.tokens import grant_prefix, token_matches, token_prefix
from transcription import metrics

MAX_BATCH = 500  # prefixes in one query (an IN list every database takes)

Digests = Callable[..., dict[str, list[str]]]


class TokenProbe:
    """Is this raw token a usable one? Asked by many, answered in batches.

    `digests(prefixes=…)` reads the usable digests by prefix (API tokens by default;
    grants for `grant_probe`), `prefix` cuts a raw value to its stored prefix.
    """

    def __init__(
        self,
        digests: Digests = selectors.api_token_digests,
        prefix: Callable[[str], str] = token_prefix,
    ) -> None:
        self._digests = digests
        self._prefix = prefix
        self._waiting: list[tuple[str, asyncio.Future[bool]]] = []
        self._task: asyncio.Task | None = None

    async def matches(self, raw: str) -> bool:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and task.get_loop() is not loop:
            self._waiting, self._task = [], None  # a loop that is gone (tests)
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((raw, waiter))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return await waiter

    async def _run(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                digests = await self._usable_digests(
                    {self._prefix(raw) for raw, _ in batch}
                )
            except Exception as exc:  # each waiter gets the error, as a lookup would
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for raw, waiter in batch:
                if not waiter.done():
                    candidates = digests.get(self._prefix(raw), ())
                    waiter.set_result(any(token_matches(raw, d) for d in candidates))

    async def _usable_digests(self, prefixes: Iterable[str]) -> dict[str, list[str]]:
        metrics.TOKEN_LOOKUPS.labels(kind="probe").inc()
        return await database_sync_to_async(self._digests)(prefixes=prefixes)


token_probe = TokenProbe()
grant_probe = TokenProbe(selectors.grant_digests, grant_prefix)
