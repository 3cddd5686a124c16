"""Running sessions lose their access within seconds of a revocation.

The rule is docs/protocol.md §2. A token revoked or expired, a user deactivated or a
browser session logged out may change in any process (a command, the admin, another
daphne), so each process asks the database: every ACCESS_CHECK_SECONDS, one check
covers all the sessions its event loop serves, and each session whose grant no
longer holds is called back once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from transcription.db import DATABASE_AWAY, db_call
from transcription.selectors import grants_revoked

logger = logging.getLogger(__name__)

OnRevoked = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Grant:
    """What lets a session run: its API token, its user, its Django session."""

    token_id: int | None
    user_id: int | None
    # The session key is a credential (the cookie's value): never in a log line.
    session_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> Grant | None:
        """The grant of an accepted connection (ApiTokenAuthMiddleware's scope)."""
        method = scope.get("auth_method")
        if method == "token":
            token = scope["api_token"]
            return cls(token_id=token.pk, user_id=token.user_id)
        if method == "grant":  # runs as its user's, and its token's if one asked
            token = scope.get("api_token")
            return cls(token_id=token.pk if token else None, user_id=scope["user"].pk)
        if method == "session":
            session = scope.get("session")
            key = session.session_key if session is not None else None
            return cls(token_id=None, user_id=scope["user"].pk, session_key=key)
        return None


class Handle:
    """One watched session; cancel() it when the session ends."""

    def __init__(
        self, watch: AccessWatch, grant: Grant, on_revoked: OnRevoked, label: str
    ) -> None:
        self._watch = watch
        self.grant = grant
        self.on_revoked = on_revoked
        self.label = label or repr(grant)

    def cancel(self) -> None:
        """Stop watching (harmless after the callback, or twice)."""
        self._watch.unwatch(self)


class AccessWatch:
    """The grants of one event loop's sessions, checked together in one task.

    The task runs only while something is watched. A failing check (the database
    is down) is logged and tried again at the next tick; a failing callback is
    logged. Neither stops the watch.
    """

    def __init__(self) -> None:
        self._handles: dict[Handle, None] = {}  # an ordered set
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._task is not None

    def watch(self, grant: Grant, on_revoked: OnRevoked, *, label: str = "") -> Handle:
        """Call `await on_revoked(reason)` once when `grant` no longer holds.

        `label` names the session in log lines (e.g. "session <id>").
        """
        handle = Handle(self, grant, on_revoked, label)
        self._handles[handle] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="access-watch"
            )
        return handle

    def unwatch(self, handle: Handle) -> None:
        if handle in self._handles:
            del self._handles[handle]
            if not self._handles:
                self._stop()

    def _stop(self) -> None:
        # Nothing left to watch: end the task now rather than at its next tick, so a
        # loop whose sessions are all gone has no task of ours left on it.
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self._handles:
            await asyncio.sleep(settings.ACCESS_CHECK_SECONDS)
            await self.check()
        if self._task is asyncio.current_task():
            self._task = None

    async def check(self) -> None:
        """One check of every watched grant now (the task's tick)."""
        grants = {handle.grant for handle in self._handles}
        if not grants:
            return
        try:
            revoked = await db_call(grants_revoked, grants=grants)
        except DATABASE_AWAY as exc:
            logger.warning(
                "access check of %d grants: database unavailable (%s); "
                "trying again in %g s",
                len(grants),
                exc.__class__.__name__,
                settings.ACCESS_CHECK_SECONDS,
            )
            return
        except Exception:
            logger.exception(
                "access check of %d grants failed; trying again in %g s",
                len(grants),
                settings.ACCESS_CHECK_SECONDS,
            )
            return
        for handle in list(self._handles):
            reason = revoked.get(handle.grant)
            if reason is not None:
                del self._handles[handle]
                task = asyncio.create_task(self._notify(handle, reason))
                self._callbacks.add(task)
                task.add_done_callback(self._callbacks.discard)

    async def _notify(self, handle: Handle, reason: str) -> None:
        logger.info("%s: access ended: %s", handle.label, reason)
        try:
            await handle.on_revoked(reason)
        except Exception:
            logger.exception("%s: the access-ended callback failed", handle.label)

    async def aclose(self) -> None:
        """Forget every watch; cancel and await the task and running callbacks."""
        task, tasks = self._task, [*self._callbacks]
        self._handles.clear()
        self._stop()
        for pending in [task, *tasks]:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessWatch] = (
    weakref.WeakKeyDictionary()
)


def access_watch() -> AccessWatch:
    """The running event loop's watch (a process may run several loops: tests)."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = AccessWatch()
    return watch
