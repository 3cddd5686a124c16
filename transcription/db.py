"""Database calls from async code: in the database thread, each bounded in time.

The database may be away (a crash, a failover): `DATABASE_AWAY` is what a call then
raises (refused, dropped, or no answer within DATABASE_TIMEOUT_SECONDS); anything
else is a bug, and is not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError

DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    TimeoutError,
)


async def db_call(service: Callable[..., Any], **kwargs: Any) -> Any:
    """`service(**kwargs)` in the database thread, within DATABASE_TIMEOUT_SECONDS.

    On a timeout the thread may still be busy with the call; the caller goes on
    (the driver's own connect and statement timeouts end it there).
    """
    async with asyncio.timeout(settings.DATABASE_TIMEOUT_SECONDS):
        return await database_sync_to_async(service)(**kwargs)
