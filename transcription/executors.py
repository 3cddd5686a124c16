"""Named thread pools for blocking calls made from async code, sized by settings.

`asyncio.to_thread` uses the loop's default executor, which everything shares (the
ORM through `sync_to_async` aside, a few threads in all): one slow receiver or voice
could starve the rest. Each kind of blocking work gets a pool of its own instead,
named by a string and created on first use in each process. Its size comes from
BLOCKING_POOL_THREADS[name]; a name missing from it gets DEFAULT_THREADS.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.conf import settings

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 2

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}
_pid = os.getpid()


def pool_size(name: str) -> int:
    """The number of threads of pool `name` (at least 1)."""
    return max(1, int(settings.BLOCKING_POOL_THREADS.get(name, DEFAULT_THREADS)))


def executor(name: str) -> ThreadPoolExecutor:
    """This process's pool `name`, created on first use."""
    global _pid
    with _lock:
        if _pid != os.getpid():
            # A forked child has the parent's pool objects but none of its threads.
            _pools.clear()
            _pid = os.getpid()
        pool = _pools.get(name)
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=pool_size(name), thread_name_prefix=f"blocking-{name}"
            )
            _pools[name] = pool
        return pool


async def run_blocking(
    name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """`fn(*args, **kwargs)` on pool `name`, awaited without blocking the loop.

    Cancelling the await does not stop a call that already started (threads cannot
    be interrupted); its result is dropped.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, **kwargs)
    return await loop.run_in_executor(executor(name), call)


def shutdown_pools(*, wait: bool = True) -> None:
    """Stop every pool of this process; the next call creates it again (tests)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=wait, cancel_futures=True)
