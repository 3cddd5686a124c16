"""The audio browsers and phones send, turned into PCM in front of an engine.

Engines decode 16-bit PCM; a session may send instead (docs/protocol.md §3):

- G.711 (`mulaw`, `alaw`), telephony's: each chunk decoded by table as it comes
  (`g711`), on the event loop: it is stateless and costs microseconds.
- a container stream (`webm`, `ogg-opus`, `mp4`, `flac`), what MediaRecorder gives:
  chunks of one file, the first carrying its header. PyAV (FFmpeg's libraries,
  in-process: no ffmpeg subprocess) demuxes and decodes it to 16 kHz mono. A demuxer
  pulls its input, so each session's decoder runs in a thread of its own that waits
  for the client's next chunk (in a shared pool, sessions waiting for audio would
  hold every thread). Its reads and writes hop to the event loop, where the
  compressed backlog and the engine's stream live: the backlog is bounded in bytes
  as the client sent them (MAX_AUDIO_BACKLOG_BYTES), and the decoder waits while the
  engine's own backlog is full, so flow control slows the client as for PCM.
  The PCM handed to the engine is the session's clock: its audio seconds (the
  bytes received have no fixed rate) and the position final latency is measured
  from (`CountsAudio`).

What a hostile stream can cost is bounded (docs/operations.md §11): the decoders a
process runs at once (MAX_DECODER_THREADS: beyond, 1013), the codecs each container
may carry (FFmpeg's few the encodings are for, not its hundreds), the channels and
sample rate a frame may have (FLAC may declare 655 kHz, Opus 255 channels: many times
a browser's stream to decode), and the audio one session may decode: MAX_SESSION_SECONDS
of it, as of time (a few kilobytes of FLAC are an hour of silence, and an engine may
hear silence faster than real time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from django.conf import settings

from transcription import metrics
from transcription.audio_files import DECODED_RATE
from transcription.close_codes import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TRY_AGAIN,
)
from transcription.engines import g711
from transcription.engines.stream import AudioBacklog
from transcription.engines.types import (
    EngineError,
    StreamEvent,
    StreamParams,
    audio_backlog_limit,
)

if TYPE_CHECKING:
    from transcription.engines import SpeechToText

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT_SECONDS = 5.0
DECODED_BYTES_PER_SECOND: Final = DECODED_RATE * 2  # 16-bit mono
# Decoded audio goes to the engine when the decoder has read all it was given, or
# at this much (a stream sent faster than real time), whichever comes first.
DELIVER_BYTES = DECODED_BYTES_PER_SECOND
# Enough of the first chunk to tell its container.
HEAD_BYTES = 8
# What a decoded frame may be: more than 7.1 or studio rates is no speech client's.
MAX_CHANNELS: Final = 8
MAX_SAMPLE_RATE: Final = 192000


@dataclasses.dataclass(frozen=True, slots=True)
class Container:
    """A container encoding: FFmpeg's demuxer for it and how its stream begins."""

    demuxer: str
    name: str  # as the client is told
    magic: tuple[bytes, ...]
    codecs: tuple[str, ...]  # FFmpeg's decoders it may use: what clients send in it
    magic_at: int = 0

    def starts(self, head: bytes) -> bool:
        return head[self.magic_at : self.magic_at + 4] in self.magic


CONTAINERS: Final[dict[str, Container]] = {
    # The EBML header.
    "webm": Container("webm", "WebM", (b"\x1a\x45\xdf\xa3",), ("opus", "vorbis")),
    "ogg-opus": Container("ogg", "Ogg", (b"OggS",), ("opus", "vorbis")),
    # An MP4 stream begins with a box: `ftyp` (MediaRecorder's) or a fragment's.
    # Safari records AAC, Chrome Opus.
    "mp4": Container(
        "mp4",
        "MP4",
        (b"ftyp", b"styp", b"moof", b"moov"),
        ("aac", "opus", "flac"),
        magic_at=4,
    ),
    "flac": Container("flac", "FLAC", (b"fLaC",), ("flac",)),
}
# Every encoding an engine may take as PCM through this module.
TRANSCODED: Final = (*CONTAINERS, *g711.TABLES)


async def open_transcoded(
    open_pcm: Callable[[StreamParams], Awaitable[SpeechToText]], params: StreamParams
) -> SpeechToText:
    """A stream that takes `params.encoding` and gives the engine's stream, opened
    with `open_pcm`, PCM: G.711 at its own rate, containers at 16 kHz."""
    if params.encoding in g711.TABLES:
        inner = await open_pcm(dataclasses.replace(params, encoding="pcm"))
        return G711Stream(inner, params.encoding)
    container = CONTAINERS[params.encoding]
    if not decoders.take():
        metrics.DECODERS_REFUSED.inc()
        raise EngineError(
            "Server busy: it decodes as many compressed streams (webm, ogg-opus, mp4, "
            f"flac) at once as it may ({settings.MAX_DECODER_THREADS}, "
            "MAX_DECODER_THREADS). Try again later, or send encoding=pcm.",
            close_code=CLOSE_TRY_AGAIN,
            kind="capacity",
        )
    try:
        inner = await open_pcm(
            dataclasses.replace(params, encoding="pcm", sample_rate=DECODED_RATE)
        )
        # Its thread gives the slot back as it ends, once it started.
        return ContainerStream(inner, params, container)
    except BaseException:
        decoders.give_back()
        raise


class DecoderSlots:
    """This process's container decoders, each a thread while it lives, bounded by
    MAX_DECODER_THREADS. Given back by the thread as it ends (it may outlive its
    stream's aclose() by CLOSE_TIMEOUT_SECONDS): a lock, not the event loop's order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = 0

    def take(self) -> bool:
        with self._lock:
            if self._held >= settings.MAX_DECODER_THREADS:
                return False
            self._held += 1
        metrics.DECODER_THREADS.inc()
        return True

    def give_back(self) -> None:
        with self._lock:
            self._held -= 1
        metrics.DECODER_THREADS.dec()

    @property
    def held(self) -> int:
        return self._held


decoders: Final = DecoderSlots()


class G711Stream:
    """G.711 in, PCM to the engine's stream; its backlog is the engine's (the same
    seconds of audio as MAX_AUDIO_BACKLOG_SECONDS of G.711)."""

    def __init__(self, inner: SpeechToText, encoding: str) -> None:
        self._inner = inner
        self._encoding = encoding

    async def send_audio(self, chunk: bytes) -> None:
        await self._inner.send_audio(g711.to_pcm(self._encoding, chunk))

    def backlog_full(self) -> bool:
        return self._inner.backlog_full()

    async def end_audio(self) -> None:
        await self._inner.end_audio()

    async def finalize(self) -> None:
        await self._inner.finalize()  # each frame was decoded as it came

    def events(self) -> AsyncIterator[StreamEvent]:
        return self._inner.events()

    async def aclose(self) -> None:
        await self._inner.aclose()


class BadAudio(Exception):
    """The client's bytes are not the container it named, or not what it may hold."""


class _TooLong(Exception):
    """The session decoded all the audio a session may have."""


class _Stopped(Exception):
    """The stream closed (or its event loop went): the decoder stops quietly."""


class ContainerStream:
    """A container stream decoded by PyAV in a thread of its own, PCM to `inner`.

    A stream that cannot be decoded ends with the finals of what was decoded, then
    an EngineError (1008, kind `audio`) that names the container; one that decoded
    MAX_SESSION_SECONDS of audio ends there, a plain 1000 with its reason. It counts the
    PCM it handed to `inner` (`audio_seconds`), and calls `on_decoded` with the
    total each time it hands some (CountsAudio).
    """

    on_decoded: Callable[[int], None] | None = None

    def __init__(
        self, inner: SpeechToText, params: StreamParams, container: Container
    ) -> None:
        self._inner = inner
        self._container = container
        self._session_id = params.session_id
        self._backlog = AudioBacklog(audio_backlog_limit(params), sample_bytes=1)
        self._failure: EngineError | None = None
        self._closed = False
        # A Finalize: the engine's utterance ends once the audio decoded from the
        # bytes received before it (this many) reached the engine.
        self._finalize_at: int | None = None
        self._waiting = False  # the decoder waits for the client's next bytes
        self._decoded = 0  # bytes of PCM handed to the engine
        # MAX_SESSION_SECONDS of decoded audio, in whole samples.
        self._longest = int(settings.MAX_SESSION_SECONDS * DECODED_RATE) * 2
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, name=f"decode-{self._session_id[:8]}", daemon=True
        )
        self._thread.start()

    @property
    def audio_seconds(self) -> float:
        return self._decoded / DECODED_BYTES_PER_SECOND

    async def send_audio(self, chunk: bytes) -> None:
        await self._backlog.put(chunk)

    def backlog_full(self) -> bool:
        return self._backlog.full

    async def end_audio(self) -> None:
        self._backlog.end()

    async def finalize(self) -> None:
        backlog = self._backlog
        if self._waiting and backlog.taken >= backlog.received:
            await self._inner.finalize()  # all of it decoded and handed on already
        else:
            self._finalize_at = backlog.received

    async def events(self) -> AsyncIterator[StreamEvent]:
        async for event in self._inner.events():
            yield event
        if self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.close()  # the decoder's next read is its end
        await self._inner.aclose()  # also frees a decoder waiting for room
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), CLOSE_TIMEOUT_SECONDS)

    # --- on the event loop, for the decoder thread --------------------------------

    async def _exchange(self, pcm: bytes, size: int) -> bytes:
        """Hand the engine what was decoded, then up to `size` bytes of the client's
        audio once there are some (b"": the end)."""
        if pcm:
            await self._hand(pcm)
        at = self._finalize_at
        if at is not None and self._backlog.taken >= at:
            self._finalize_at = None  # what came before it is decoded: end there
            await self._inner.finalize()
        self._waiting = True
        try:
            await self._backlog.readable()
        finally:
            self._waiting = False
        return self._backlog.take(size)

    async def _hand(self, pcm: bytes) -> None:
        """The engine takes `pcm` (waits while its backlog is full); counted once
        it did."""
        await self._inner.send_audio(pcm)
        self._decoded += len(pcm)
        if self.on_decoded is not None:
            self.on_decoded(self._decoded)

    async def _finish(self, pcm: bytes) -> None:
        if self._closed:
            return
        if self._failure is not None:
            self._backlog.close()  # what the client still sends is dropped
        if pcm:
            await self._hand(pcm)
        await self._inner.end_audio()

    # --- the decoder thread -----------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the event loop and wait for it."""
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise _Stopped from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise _Stopped from None

    def _run(self) -> None:
        import av  # a dependency of faster-whisper; imported where it is used

        try:
            self._run_decoder(av)
        finally:
            decoders.give_back()

    def _run_decoder(self, av: Any) -> None:
        output = _Output(self, self._longest)
        try:
            self._decode(av, output)
        except _Stopped:
            pass
        except _TooLong:
            longest = settings.MAX_SESSION_SECONDS
            logger.info("session %s: %g s of audio decoded", self._session_id, longest)
            self._failure = EngineError(
                f"Session reached the longest allowed, {longest:g} seconds of audio.",
                close_code=CLOSE_NORMAL,
                kind="",
            )
        except (BadAudio, av.FFmpegError) as exc:
            if not self._closed:
                detail = getattr(exc, "strerror", None) or str(exc)
                logger.info("session %s: undecodable audio: %s", self._session_id, exc)
                self._failure = EngineError(
                    f"The audio could not be decoded as {self._container.name} "
                    f"({detail}). Send the stream from its first byte (MediaRecorder's "
                    "first chunk carries the header), or choose the encoding that "
                    "matches it.",
                    close_code=CLOSE_POLICY,
                    kind="audio",
                )
        except Exception:
            logger.exception("session %s: audio decoder failed", self._session_id)
            self._failure = EngineError(
                "Transcription failed: the audio decoder failed.",
                close_code=CLOSE_SERVER_ERROR,
            )
        with contextlib.suppress(_Stopped):
            self._call(self._finish(output.take()))
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(_resolve, self._done)

    def _decode(self, av: Any, output: _Output) -> None:
        source = _Input(self, output)
        head = source.peek(HEAD_BYTES)
        if not head:
            return  # no audio at all
        if not self._container.starts(head):
            raise BadAudio(f"it does not begin as {self._container.name} streams do")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=DECODED_RATE)
        skipped = decoded = 0
        with av.open(source, mode="r", format=self._container.demuxer) as container:
            if not container.streams.audio:
                raise BadAudio("it has no audio track")
            audio = container.streams.audio[0]
            # The codec's own name, whichever decoder FFmpeg picked (libopus: opus).
            codec = audio.codec_context.codec.canonical_name
            if codec not in self._container.codecs:
                codecs = ", ".join(self._container.codecs)
                raise BadAudio(
                    f"its codec is {codec}; this server takes {codecs} in "
                    f"{self._container.name}"
                )
            _check_shape(audio.codec_context)  # as its header says
            for packet in container.demux(audio):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    # One damaged packet (the last of a recording cut short) costs
                    # its 20 ms, not the session.
                    skipped += 1
                    continue
                decoded += len(frames)
                for frame in frames:
                    _check_shape(frame)
                    output.add(resampler.resample(frame))
            output.add(resampler.resample(None))  # what the resampler still holds
        if skipped:
            logger.info("session %s: %d packets skipped", self._session_id, skipped)
            if not decoded:
                raise BadAudio(f"none of its {skipped} packets could be decoded")
        while source.read(65536):
            pass  # past the container's own end: dropped until END_OF_STREAM


def _check_shape(audio: Any) -> None:
    """A stream's header, then every frame it decodes to: a stream may change its
    shape as it goes."""
    channels, rate = audio.layout.nb_channels, audio.sample_rate
    if channels > MAX_CHANNELS or rate > MAX_SAMPLE_RATE:
        raise BadAudio(
            f"it has {channels} channels at {rate} Hz; the most this server decodes "
            f"is {MAX_CHANNELS} channels at {MAX_SAMPLE_RATE} Hz"
        )


class _Output:
    """PCM the decoder made and has not handed over yet (the thread's own), up to
    `room` bytes in all: past it, _TooLong."""

    def __init__(self, stream: ContainerStream, room: int) -> None:
        self._stream = stream
        self._pieces: list[bytes] = []
        self._bytes = 0
        self._room = room

    def add(self, frames: list[Any]) -> None:
        for frame in frames:
            piece = frame.to_ndarray().astype("<i2").tobytes()
            if len(piece) >= self._room:
                self._pieces.append(piece[: self._room])
                self._room = 0
                raise _TooLong  # what came before it is handed on at the end
            self._room -= len(piece)
            self._pieces.append(piece)
            self._bytes += len(piece)
        if self._bytes >= DELIVER_BYTES:
            self._stream._call(self._stream._hand(self.take()))

    def take(self) -> bytes:
        pcm = b"".join(self._pieces)
        self._pieces.clear()
        self._bytes = 0
        return pcm


class _Input:
    """The file PyAV reads (no seek: a stream): each read first hands the engine
    what was decoded, then waits for the client's next chunk."""

    def __init__(self, stream: ContainerStream, output: _Output) -> None:
        self._stream = stream
        self._output = output
        self._head = b""

    def peek(self, size: int) -> bytes:
        """At least `size` bytes from the start (fewer: the stream is that short),
        read again by the next reads."""
        while len(self._head) < size and (more := self._fetch(size)):
            self._head += more
        return self._head

    def read(self, size: int) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._fetch(size)

    def _fetch(self, size: int) -> bytes:
        stream = self._stream
        return stream._call(stream._exchange(self._output.take(), size))


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
