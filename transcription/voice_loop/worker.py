"""Batch delivery: claim due batches, ask the receiver, speak the reply, push it.

A batch is due when SILENCE_SECONDS passed after its last final (or at once after
END_OF_STREAM), or when its retry time came. Workers find due batches in the
database and claim each with one atomic UPDATE, so several may run side by side
(`manage.py run_worker` with REDIS_URL); with the in-memory channel layer one
runs as a task inside the server process. Replies reach the session's socket
through its channel-layer group, wherever the worker runs.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from transcription import metrics, selectors, services
from transcription.channel_layer import LAYER_ERRORS, layer_health
from transcription.db import DATABASE_AWAY
from transcription.models import WORKER_HEARTBEAT_SECONDS, ReceiverBatch
from transcription.voice_loop.receiver import (
    ReceiverError,
    exchange_budget,
    receiver_config,
    receiver_exchange,
    receiver_stream,
)
from transcription.voice_loop.replies import (
    ReplyEvent,
    reply_event,
    reply_piece_event,
    session_group,
)
from transcription.voice_loop.sentences import SentenceSplitter
from transcription.voice_loop.tts import TtsError, get_tts

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# How often a streamed reply waiting for its receiver's next line asks whether the
# person spoke over it (bargeIn).
BARGE_IN_POLL_SECONDS = 0.25


def lease_seconds() -> float:
    """How long a claim holds: one exchange, the speech, and some slack."""
    return exchange_budget() + 30


class BatchWorker:
    """Delivers due batches, at most `concurrency` at a time.

    `stop(grace)` ends `run()` in order: no new claims, deliveries under way get
    `grace` seconds to finish, the rest are cancelled and their batches released
    (due again at once, the attempt not counted). Cancelling `run()` releases at
    once.
    """

    def __init__(self, worker_id: str = "", *, concurrency: int = 8):
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.concurrency = concurrency
        self.wake = asyncio.Event()
        self.tasks: dict[asyncio.Task, int] = {}  # delivery → its batch's pk
        self.beat_at = -float("inf")
        self.stopping = False
        self.grace = 0.0

    async def run(self) -> None:
        """Claim and deliver until cancelled."""
        logger.info("batch worker %s started", self.worker_id)
        try:
            while not self.stopping:
                self.wake.clear()
                try:
                    await self._heartbeat()
                    await self.claim_due()
                    delay = await self._next_delay()
                except DATABASE_AWAY as exc:
                    # The database is away: try again later (one line a poll).
                    logger.warning(
                        "batch worker %s: database unavailable (%s)",
                        self.worker_id,
                        exc.__class__.__name__,
                    )
                    delay = POLL_SECONDS
                except Exception:
                    # Nor must a bug: try again later.
                    logger.exception("batch worker %s: claiming failed", self.worker_id)
                    delay = POLL_SECONDS
                if self.stopping:
                    break
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
                # a cancellation that meets the wake-up, and the worker ran on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
            if self.tasks and self.grace > 0:
                await asyncio.wait(set(self.tasks), timeout=self.grace)
        finally:
            await self._release_unfinished()
            logger.info("batch worker %s stopped", self.worker_id)

    async def _heartbeat(self) -> None:
        """Record that this worker polls (at most every WORKER_HEARTBEAT_SECONDS)."""
        now = time.monotonic()
        if now - self.beat_at >= WORKER_HEARTBEAT_SECONDS:
            self.beat_at = now
            await database_sync_to_async(services.worker_heartbeat)(
                worker_id=self.worker_id
            )

    def stop(self, grace: float) -> None:
        """Claim nothing more; let deliveries finish for `grace` seconds."""
        self.stopping = True
        self.grace = grace
        self.wake.set()

    async def _release_unfinished(self) -> None:
        unfinished = dict(self.tasks)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for task, pk in unfinished.items():
            if not task.cancelled():
                continue  # it finished after all (its outcome is stored)
            try:
                released = await database_sync_to_async(services.batch_release)(
                    batch_pk=pk, worker_id=self.worker_id
                )
            except Exception:
                # Its lease runs out instead, and that attempt counts.
                logger.exception("batch %s: not released", pk)
            else:
                if released:
                    logger.info("batch %s released by %s", pk, self.worker_id)

    async def claim_due(self) -> None:
        for batch in await database_sync_to_async(services.batches_give_up_exhausted)():
            await self._push(batch, DeliveryOutcome(error=batch.last_error))
        room = self.concurrency - len(self.tasks)
        if room <= 0:
            return
        for pk in await database_sync_to_async(selectors.batches_due)(limit=room):
            claimed = await database_sync_to_async(services.batch_claim)(
                batch_pk=pk, worker_id=self.worker_id, lease_seconds=lease_seconds()
            )
            if claimed:
                task = asyncio.create_task(self.deliver(pk))
                self.tasks[task] = pk
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        self.wake.set()

    async def _next_delay(self) -> float:
        """Until the next batch falls due, at most POLL_SECONDS (other processes
        add batches too)."""
        delay = POLL_SECONDS
        if len(self.tasks) < self.concurrency:
            due = await database_sync_to_async(selectors.batch_next_due_at)()
            if due is not None:
                delay = (due - timezone.now()).total_seconds()
        return min(max(delay, 0.02), POLL_SECONDS)

    async def deliver(self, batch_pk: int) -> None:
        """One attempt: the exchange, then speech, each outcome stored, then pushed.

        Whatever goes wrong is a failed attempt, counted towards
        RECEIVER_MAX_ATTEMPTS like a refused connection: a batch that always raises
        ends failed, never claimed again and again.
        """
        session_id = "?"
        try:
            document, options = await database_sync_to_async(selectors.batch_delivery)(
                batch_pk=batch_pk
            )
            session_id = document["session_id"]
            interrupted = None
            if options["bargeIn"]:
                interrupted = functools.partial(
                    database_sync_to_async(selectors.batch_interrupted),
                    batch_pk=batch_pk,
                )
            if options["replyStream"]:
                outcome = await deliver_streamed(document, interrupted=interrupted)
            else:
                outcome = await deliver_document(document)
                if interrupted is not None and await interrupted():
                    outcome.sent = ""  # the person spoke again: not sent
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception(
                "session %s: batch %s: delivery failed unexpectedly",
                session_id,
                batch_pk,
            )
            # The class only: an exception's text may quote an address or a secret.
            outcome = DeliveryOutcome(
                error=f"Delivery failed unexpectedly ({exc.__class__.__name__}).",
                retry=True,
            )
        if outcome.error:
            metrics.RECEIVER_FAILURES.inc()
        if outcome.tts_error:
            metrics.TTS_FAILURES.inc()
        try:
            await self._record(batch_pk, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database is away: the lease runs out and the next claim is the
            # next attempt (batches_give_up_exhausted ends it past the maximum).
            logger.exception(
                "session %s: batch %s: the outcome was not stored", session_id, batch_pk
            )

    async def _record(self, batch_pk: int, outcome: DeliveryOutcome) -> None:
        if outcome.error:
            batch = await database_sync_to_async(services.batch_record_failure)(
                batch_pk=batch_pk,
                worker_id=self.worker_id,
                message=outcome.error,
                retry=outcome.retry,
            )
            if batch is None or batch.status != batch.Status.FAILED:
                return
        else:
            batch = await database_sync_to_async(services.batch_record_reply)(
                batch_pk=batch_pk,
                worker_id=self.worker_id,
                reply=outcome.reply,
                audio=outcome.audio,
                tts_engine=outcome.tts_engine,
                tts_error=outcome.tts_error,
                sent=outcome.sent,
            )
            if batch is None:
                return
            logger.info(
                "session %s: batch %s answered (%d characters, audio %s)",
                batch.session_id,
                batch.batch_id,
                len(outcome.reply),
                "none" if outcome.audio is None else f"{len(outcome.audio)} bytes",
            )
            if outcome.streamed or outcome.sent is not None:
                return  # its pieces were pushed, or it was cut short: nothing more
        await self._push(batch, outcome)

    async def _push(self, batch: ReceiverBatch, outcome: DeliveryOutcome) -> None:
        await push_event(
            str(batch.session_id),
            outcome.event(str(batch.batch_id)),
        )


async def push_event(session_id: str, event: ReplyEvent) -> None:
    """Tell the session's consumer, if it is still there (the outcome is stored:
    a channel layer that fails here loses nothing)."""
    try:
        await get_channel_layer().group_send(session_group(session_id), event)
    except LAYER_ERRORS as exc:
        # The session picks it up from the database once the layer is back.
        layer_health.failed("group_send", exc)
        logger.info(
            "session %s: batch %s: outcome stored, not pushed (channel layer away)",
            session_id,
            event["batch_id"],
        )
    except Exception:
        logger.exception(
            "session %s: batch %s: could not push the outcome",
            session_id,
            event["batch_id"],
        )


@dataclass(slots=True)
class DeliveryOutcome:
    reply: str = ""
    audio: bytes | None = None
    tts_engine: str = ""
    tts_error: str = ""
    error: str = ""
    retry: bool = False
    streamed: bool = False  # pieces of it were pushed as they were spoken
    sent: str | None = None  # barge-in: what was sent before it (None: all)

    def event(self, batch_id: str) -> ReplyEvent:
        """The channel-layer message the session's consumer turns into a reply."""
        audio = base64.b64encode(self.audio).decode() if self.audio else None
        return reply_event(
            batch_id=batch_id,
            message=self.reply,
            audio=audio,
            error=self.error or self.tts_error,
        )


async def speak(text: str, language: str, session_id: str) -> tuple[bytes | None, str]:
    """The MP3 of `text`, or None and why not (the text is still sent)."""
    try:
        return (
            await asyncio.wait_for(
                get_tts().synthesize(text, language=language), settings.TTS_TIMEOUT
            ),
            "",
        )
    except TtsError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"No speech within {settings.TTS_TIMEOUT:g} seconds."
    except Exception as exc:
        logger.exception("session %s: text-to-speech failed", session_id)
        return None, f"Text-to-speech failed: {exc.__class__.__name__}."


async def deliver_streamed(
    document: dict, *, interrupted: Callable[[], Awaitable[bool]] | None = None
) -> DeliveryOutcome:
    """replyStream (docs/protocol.md §11): the reply read as the receiver writes it,
    cut into sentences, each spoken and pushed at once as one piece (`seq`, `last`).

    A piece is `last` when the reply had ended by the time it was spoken; when the
    reply ends after a piece went out, an empty last piece closes it. With barge-in
    (`interrupted`), the database is asked before each piece whether the person
    spoke again: then nothing more is sent, and what was is recorded.
    """
    session_id = document["session_id"]
    batch_id = document["batch_id"]
    config = receiver_config()
    if config is None:
        return DeliveryOutcome(error="No receiver is configured.", retry=True)
    sentences: collections.deque[str] = collections.deque()
    arrived = asyncio.Event()
    received: list[str] = []

    async def read() -> None:
        splitter = SentenceSplitter()
        try:
            async for fragment in receiver_stream(config, document):
                received.append(fragment)
                sentences.extend(splitter.feed(fragment))
                arrived.set()
            if rest := splitter.finish():
                sentences.append(rest)
        finally:
            arrived.set()

    reader = asyncio.create_task(read())
    outcome = DeliveryOutcome(tts_engine=get_tts().name)
    audio = bytearray()
    sent: list[str] = []
    seq = 0
    closed = False  # the last piece went out
    try:
        while True:
            if not sentences:
                if reader.done():
                    break
                arrived.clear()
                if interrupted is None:
                    await arrived.wait()
                    continue
                # Barge-in: while the receiver writes on, look now and then
                # whether the person spoke again (then stop reading it).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BARGE_IN_POLL_SECONDS):
                        await arrived.wait()
                if not sentences and not reader.done() and await interrupted():
                    outcome.sent = " ".join(sent)
                    break
                continue
            sentence = sentences.popleft()
            speech, tts_error = await speak(sentence, document["language"], session_id)
            outcome.tts_error = outcome.tts_error or tts_error
            if speech:
                audio += speech
            if interrupted is not None and await interrupted():
                outcome.sent = " ".join(sent)
                break
            last = reader.done() and not sentences
            await push_event(
                session_id,
                reply_piece_event(
                    batch_id=batch_id,
                    message=sentence,
                    audio=base64.b64encode(speech).decode() if speech else None,
                    seq=seq,
                    last=last,
                ),
            )
            outcome.streamed = True
            sent.append(sentence)
            seq += 1
            if last:
                closed = True
                break
    finally:
        reader.cancel()
        # asyncio.wait: the reader's outcome is read below, and a cancellation of
        # this delivery (the worker stopping) is not swallowed here.
        await asyncio.wait({reader})
    failure = reader.exception() if not reader.cancelled() else None
    if failure is not None and not sent:
        if isinstance(failure, ReceiverError):
            logger.warning("session %s: receiver: %s", session_id, failure.message)
            return DeliveryOutcome(error=failure.message, retry=failure.retry)
        raise failure
    if failure is not None:
        logger.warning(
            "session %s: batch %s: the reply broke off after %d sentences: %s",
            session_id,
            batch_id,
            len(sent),
            getattr(failure, "message", failure.__class__.__name__),
        )
    if sent and outcome.sent is None and not closed:
        # The reply ended (or broke off) after its last piece went out.
        await push_event(
            session_id,
            reply_piece_event(
                batch_id=batch_id, message="", audio=None, seq=seq, last=True
            ),
        )
    outcome.reply = " ".join(" ".join(received).split())
    outcome.audio = bytes(audio) or None
    if not outcome.reply:
        outcome.tts_engine = ""
    return outcome


async def deliver_document(document: dict) -> DeliveryOutcome:
    """Ask the receiver; speak a non-empty reply (a TTS failure keeps the text)."""
    session_id = document["session_id"]
    config = receiver_config()
    if config is None:
        return DeliveryOutcome(error="No receiver is configured.", retry=True)
    try:
        reply = await receiver_exchange(config, document)
    except ReceiverError as exc:
        logger.warning("session %s: receiver: %s", session_id, exc.message)
        return DeliveryOutcome(error=exc.message, retry=exc.retry)
    outcome = DeliveryOutcome(reply=reply)
    if reply:
        tts = get_tts()
        outcome.tts_engine = tts.name
        try:
            outcome.audio = await asyncio.wait_for(
                tts.synthesize(reply, language=document["language"]),
                settings.TTS_TIMEOUT,
            )
        except TtsError as exc:
            outcome.tts_error = str(exc)
        except TimeoutError:
            outcome.tts_error = f"No speech within {settings.TTS_TIMEOUT:g} seconds."
        except Exception as exc:
            logger.exception("session %s: text-to-speech failed", session_id)
            outcome.tts_error = f"Text-to-speech failed: {exc.__class__.__name__}."
    return outcome
