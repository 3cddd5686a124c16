"""Decoding in a pool of worker processes, for the offline engines.

Decoders hold the GIL or the cores while they decode, so decoding runs neither on the
event loop nor in a thread: an engine keeps OFFLINE_DECODER_PROCESSES one-process
executors ("spawn" context, started on first use). Each session is pinned to the
least loaded process, where a worker module (`pocketsphinx_worker` for pocketsphinx,
`whisper_worker` for Whisper) keeps its decoder state; an asyncio task per session
hands it the audio waiting (all of it in one call, up to a bound) and queues the
events that come back. `send_audio()` only appends to a bounded backlog, and waits
while it is full.

A worker module provides `init_worker(*initargs)`, `session_open(key, sample_rate,
language, endpointing_ms, word_times) -> pid`, `feed(key, data, last, partials,
finalize) -> events`, `session_close(key)` and `stats()`. A Finalize is a mark in
the backlog: the call that reaches it carries `finalize`, so the utterance ends after
exactly the audio sent before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.conf import settings

from transcription.close_codes import CLOSE_SERVER_ERROR
from transcription.engines.endpointing import ONSET
from transcription.engines.stream import BacklogStream
from transcription.engines.transcode import TRANSCODED, open_transcoded
from transcription.engines.types import (
    Capabilities,
    EngineError,
    LanguageIdentified,
    SpeechStarted,
    StreamParams,
    TranscriptEvent,
    Word,
)
from transcription.executors import run_blocking

if TYPE_CHECKING:
    from transcription.engines import SpeechToText

logger = logging.getLogger(__name__)

# One call decodes at most this much audio, so that sessions sharing a process take
# turns even when one of them sends audio much faster than real time.
MAX_SECONDS_PER_CALL = 2.0

# Starting a decoding process blocks for a moment: a thread pool of its own.
DECODER_START_POOL = "decoder-start"

_pools: list[DecoderPool] = []


class _Worker:
    """One decoding process (a one-process executor) and how many sessions use it."""

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self.executor = executor
        self.sessions = 0


class DecoderPool:
    """A fixed number of decoding processes, started when first needed."""

    def __init__(
        self,
        processes: int | None = None,
        *,
        module: ModuleType,
        initargs: Sequence[Any] = (),
    ) -> None:
        self.processes = processes
        self.module = module  # the worker module the processes run
        self.initargs = tuple(initargs)
        self.workers: list[_Worker] = []
        _pools.append(self)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=self.module.init_worker,
            initargs=self.initargs,
        )

    def _ensure_workers(self) -> list[_Worker]:
        if not self.workers:
            count = self.processes or settings.OFFLINE_DECODER_PROCESSES
            self.workers = [_Worker(self._new_executor()) for _ in range(max(1, count))]
        return self.workers

    def start(self) -> list[Future]:
        """Start every decoding process now; each builds a decoder as it starts."""
        return [
            worker.executor.submit(self.module.stats)
            for worker in self._ensure_workers()
        ]

    def acquire(self) -> _Worker:
        """The least loaded process, now counting one more session."""
        worker = min(self._ensure_workers(), key=lambda w: w.sessions)
        worker.sessions += 1
        return worker

    def release(self, worker: _Worker) -> None:
        worker.sessions -= 1

    def replace(self, worker: _Worker, broken: ProcessPoolExecutor) -> None:
        """Give a slot whose process died a fresh executor (once per death)."""
        if worker.executor is broken:
            logger.warning("offline decoder process died; starting a new one")
            broken.shutdown(wait=False, cancel_futures=True)
            worker.executor = self._new_executor()

    def shutdown(self, wait: bool = True) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.executor.shutdown(wait=wait, cancel_futures=True)


def speech_gate_config() -> dict[str, Any]:
    """SPEECH_GATE*, as `speech_gate.GateConfig`'s fields for a worker process."""
    return {
        "enabled": settings.SPEECH_GATE,
        "threshold": settings.SPEECH_GATE_THRESHOLD,
        "min_speech_seconds": settings.SPEECH_GATE_MIN_SPEECH_MS / 1000,
    }


def shutdown_pools(wait: bool = True) -> None:
    """Stop every decoding process of this process's engines (tests, exit)."""
    for pool in _pools:
        pool.shutdown(wait=wait)


class OfflineStream(BacklogStream):
    """One recognition, pinned to one decoding process."""

    repeats_its_end = True

    def __init__(
        self,
        *,
        pool: DecoderPool,
        worker: _Worker,
        executor: ProcessPoolExecutor,
        key: str,
        worker_pid: int,
        params: StreamParams,
        partials_behind_seconds: float | None = None,
    ) -> None:
        super().__init__(params)
        self.worker_pid = worker_pid
        self.session_id = params.session_id
        self._pool, self._worker, self._executor = pool, worker, executor
        self._key = key
        self._send_partials = params.send_partials
        self._vad_events = params.vad_events
        # Partials are skipped, finals never, while a call carries more audio than
        # this (the session is behind real time); None: never skipped.
        self._behind_bytes = (
            None
            if partials_behind_seconds is None
            else int(params.sample_rate * partials_behind_seconds) * 2
        )
        self._max_call_bytes = int(params.sample_rate * MAX_SECONDS_PER_CALL) * 2
        self._closed = False
        self._task = asyncio.create_task(self._decode_loop())

    async def finalize(self) -> None:
        self._backlog.mark()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.close()
        self._pool.release(self._worker)
        self._task.cancel()
        try:
            # Queued behind any decoding of ours already sent: the executor is FIFO.
            freed: Future | None = self._executor.submit(
                self._pool.module.session_close, self._key
            )
        except (BrokenProcessPool, RuntimeError):
            freed = None
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self._end_events()
        if freed is not None:
            # Shielded: the worker frees the session even if we are cancelled.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(freed))

    async def _decode_loop(self) -> None:
        try:
            await self._decode_all()
        except BrokenProcessPool:
            logger.error("session %s: decoder process died", self.session_id)
            self._pool.replace(self._worker, self._executor)
            self._fail("Transcription failed: the decoder process stopped.")
        except Exception:
            logger.exception("session %s: offline decoding failed", self.session_id)
            self._fail("Transcription failed: decoder error.")
        finally:
            self._backlog.close()  # a sender waiting for room must not wait forever
            self._end_events()

    async def _decode_all(self) -> None:
        loop = asyncio.get_running_loop()
        backlog = self._backlog
        while True:
            await backlog.readable()
            data = backlog.take(self._max_call_bytes)
            last = backlog.ended and not backlog
            events = await loop.run_in_executor(
                self._executor,
                self._pool.module.feed,
                self._key,
                data,
                last,
                self._partials_wanted(len(data)),
                backlog.passed_mark(),
            )
            for event in events:
                if isinstance(event, LanguageIdentified):
                    self._events.put_nowait(event)
                    continue
                text, is_partial, start, end, utterance, *timed = event
                if is_partial and text == ONSET:
                    if self._vad_events:
                        self._events.put_nowait(SpeechStarted(timestamp=start))
                    continue
                self._events.put_nowait(
                    TranscriptEvent(
                        text=text,
                        is_partial=is_partial,
                        start=start,
                        end=end,
                        result_id=f"{self._key[:8]}-{utterance}",
                        words=tuple(Word(*word) for word in timed[0]) if timed else (),
                    )
                )
            if last:
                return

    def _partials_wanted(self, call_bytes: int) -> bool:
        if not self._send_partials:
            return False
        if self._behind_bytes is None:
            return True
        return call_bytes <= self._behind_bytes and not self._backlog

    def _fail(self, message: str) -> None:
        self._events.put_nowait(EngineError(message, close_code=CLOSE_SERVER_ERROR))


class PooledEngine:
    """An engine whose sessions decode in a DecoderPool (subclasses say which)."""

    name = ""
    capabilities: Capabilities
    # See OfflineStream: None keeps every partial (cheap ones, as pocketsphinx's).
    partials_behind_seconds: float | None = None
    pool: DecoderPool

    async def warm_up(self) -> None:
        """Start the decoding processes before the first session needs them."""
        self.pool._ensure_workers()  # here, so the loop's acquire() never races it
        # Spawning processes blocks for a moment: not on the event loop.
        started = await run_blocking(DECODER_START_POOL, self.pool.start)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in started))

    async def open(self, params: StreamParams) -> SpeechToText:
        """A stream for `params`; audio other than PCM is decoded in front of it."""
        if params.encoding in TRANSCODED:
            return await open_transcoded(self._open_pcm, params)
        return await self._open_pcm(params)

    async def _open_pcm(self, params: StreamParams) -> OfflineStream:
        key = uuid.uuid4().hex
        for _attempt in range(2):  # a process found dead is replaced, then retried
            worker = self.pool.acquire()
            executor = worker.executor
            try:
                worker_pid = await self._session_open(executor, key, params)
            except BrokenProcessPool:
                self.pool.release(worker)
                self.pool.replace(worker, executor)
                continue
            except BaseException:
                self.pool.release(worker)
                raise
            return OfflineStream(
                pool=self.pool,
                worker=worker,
                executor=executor,
                key=key,
                worker_pid=worker_pid,
                params=params,
                partials_behind_seconds=self.partials_behind_seconds,
            )
        raise EngineError(
            "Transcription is unavailable: the decoder process failed to start.",
            close_code=CLOSE_SERVER_ERROR,
        )

    async def _session_open(
        self, executor: ProcessPoolExecutor, key: str, params: StreamParams
    ) -> int:
        """Create the session in its worker; returns the worker's pid."""
        # The first submit to an executor spawns its process (a few ms): off the loop.
        submitted = asyncio.ensure_future(
            run_blocking(
                DECODER_START_POOL,
                executor.submit,
                self.pool.module.session_open,
                key,
                params.sample_rate,
                params.language,
                params.endpointing_ms,
                params.word_times,
            )
        )
        try:
            opened = await asyncio.shield(submitted)
            return await asyncio.shield(asyncio.wrap_future(opened))
        except asyncio.CancelledError:
            # Whatever got opened in the worker is freed after it (FIFO executor).
            module = self.pool.module
            submitted.add_done_callback(lambda _: _forget(executor, module, key))
            raise


def _forget(executor: ProcessPoolExecutor, module: ModuleType, key: str) -> None:
    with contextlib.suppress(BrokenProcessPool, RuntimeError):
        executor.submit(module.session_close, key)
