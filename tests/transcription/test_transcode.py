"""The audio browsers and phones send, turned into PCM in front of an engine."""

import asyncio
import os

import av
import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.audio import chunks, encode, encode_silence, read_pcm
from transcription.engines import (
    CountsAudio,
    EngineError,
    StreamParams,
    TranscriptEvent,
    g711,
)
from transcription.engines.transcode import decoders, open_transcoded
from transcription.engines.types import audio_backlog_limit


class PcmSink:
    """An engine's stream that keeps the PCM it gets; one final at the end."""

    def __init__(self, params: StreamParams, *, takes: bool = True) -> None:
        self.params = params
        self.pcm = bytearray()
        self.ended = asyncio.Event()
        self.closed = asyncio.Event()
        self.waiting = asyncio.Event()  # send_audio() is waiting (takes=False)
        self.takes = takes  # False: send_audio waits (an engine far behind)
        self.finalized_at: list[int] = []  # PCM bytes it had at each finalize()

    async def send_audio(self, chunk: bytes) -> None:
        if not self.takes:
            self.waiting.set()
            await self.closed.wait()
        self.pcm += chunk

    def backlog_full(self) -> bool:
        return not self.takes

    async def end_audio(self) -> None:
        self.ended.set()

    async def finalize(self) -> None:
        self.finalized_at.append(len(self.pcm))

    async def events(self):
        await self.ended.wait()
        yield TranscriptEvent(text=f"{len(self.pcm)} bytes", is_partial=False)

    async def aclose(self) -> None:
        self.closed.set()
        self.ended.set()


async def transcoded(encoding: str, *, rate: int = 16000, takes: bool = True):
    sinks: list[PcmSink] = []

    async def open_pcm(params: StreamParams) -> PcmSink:
        sinks.append(PcmSink(params, takes=takes))
        return sinks[-1]

    params = StreamParams(encoding=encoding, sample_rate=rate, session_id="test")
    stream = await open_transcoded(open_pcm, params)
    return stream, sinks[0]


async def send_all(stream, data: bytes, size: int) -> list[TranscriptEvent]:
    for piece in chunks(data, size):
        await stream.send_audio(piece)
    await stream.end_audio()
    try:
        return [event async for event in stream.events()]
    finally:
        await stream.aclose()


@pytest.mark.parametrize(
    ("encoding", "codec"), [("mulaw", "pcm_mulaw"), ("alaw", "pcm_alaw")]
)
def test_g711_tables_decode_every_byte_as_ffmpeg_does(encoding, codec):
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    every_byte = bytes(range(256))
    (frame,) = decoder.decode(av.Packet(every_byte))
    assert (
        g711.to_pcm(encoding, every_byte) == frame.to_ndarray().astype("<i2").tobytes()
    )


@pytest.mark.parametrize("encoding", ["webm", "ogg-opus", "mp4", "flac"])
@pytest.mark.parametrize("size", [333, 4096])
async def test_a_container_stream_reaches_the_engine_as_16_khz_pcm(encoding, size):
    pcm, rate = read_pcm("two_utterances.wav")
    stream, sink = await transcoded(encoding)
    events = await send_all(stream, encode(pcm, rate, encoding), size)
    assert sink.params.encoding == "pcm"
    assert sink.params.sample_rate == 16000
    assert [e.text for e in events] == [f"{len(sink.pcm)} bytes"]
    # All of it (AAC adds a frame of priming) and the same sound: lossy codecs
    # keep the loudness of each tenth of a second.
    assert abs(len(sink.pcm) - len(pcm)) <= 0.05 * 32000
    ours = loudness(bytes(sink.pcm[: len(pcm)]))
    theirs = loudness(pcm[: len(sink.pcm)])
    assert np.corrcoef(ours, theirs)[0, 1] > 0.95


@pytest.mark.parametrize("encoding", ["webm", "ogg-opus", "mp4", "flac"])
async def test_a_container_stream_counts_the_seconds_it_handed_the_engine(encoding):
    """Compressed bytes have no fixed rate: the session's audio is the PCM decoded,
    counted as the engine takes it, each step told to `on_decoded`."""
    pcm, rate = read_pcm("two_utterances.wav")
    stream, sink = await transcoded(encoding)
    assert isinstance(stream, CountsAudio)
    assert stream.audio_seconds == 0.0
    told: list[tuple[int, int]] = []  # (the total told, what the engine had then)
    stream.on_decoded = lambda total: told.append((total, len(sink.pcm)))
    await send_all(stream, encode(pcm, rate, encoding), 1000)
    assert stream.audio_seconds == len(sink.pcm) / 32000
    assert stream.audio_seconds == pytest.approx(len(pcm) / 2 / rate, abs=0.1)
    assert len(told) > 1  # as it goes, not only at the end
    assert all(total == had for total, had in told)
    assert told[-1][0] == len(sink.pcm)


async def test_audio_the_engine_has_not_taken_is_not_counted():
    pcm, rate = read_pcm("two_utterances.wav")
    stream, sink = await transcoded("webm", takes=False)  # the engine takes nothing
    for piece in chunks(encode(pcm, rate, "webm"), 1024):
        await stream.send_audio(piece)
        if sink.waiting.is_set():
            break
    async with asyncio.timeout(10):
        await sink.waiting.wait()  # the decoder hands PCM, the engine keeps it waiting
    assert stream.audio_seconds == 0.0
    await stream.aclose()


async def test_g711_is_counted_by_its_bytes_not_by_its_stream():
    stream, _sink = await transcoded("mulaw", rate=8000)
    assert not isinstance(stream, CountsAudio)  # one byte a sample: a fixed rate
    await stream.aclose()


def loudness(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    tenths = samples[: len(samples) // 1600 * 1600].reshape(-1, 1600)
    return np.sqrt((tenths**2).mean(axis=1))


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
async def test_g711_reaches_the_engine_as_pcm_at_its_own_rate(encoding):
    pcm, rate = read_pcm("hello_world.wav")
    data = encode(pcm, rate, encoding)
    stream, sink = await transcoded(encoding, rate=8000)
    await send_all(stream, data, 160)  # 20 ms frames, as telephony sends them
    assert (sink.params.encoding, sink.params.sample_rate) == ("pcm", 8000)
    assert bytes(sink.pcm) == g711.to_pcm(encoding, data)
    assert len(sink.pcm) == 2 * len(data)


@pytest.mark.parametrize(
    ("audio", "why"),
    [
        (os.urandom(20000), "does not begin as WebM streams do"),
        (read_pcm("hello_world.wav")[0], "does not begin as WebM streams do"),
        # A header, then garbage: FFmpeg's own words.
        (b"\x1a\x45\xdf\xa3" + os.urandom(5000), "Invalid data"),
    ],
)
async def test_audio_that_is_no_webm_ends_the_stream_with_a_1008(audio, why):
    stream, sink = await transcoded("webm")
    with pytest.raises(EngineError) as raised:
        await send_all(stream, audio, 1000)
    error = raised.value
    assert (error.close_code, error.kind) == (1008, "audio")
    assert error.message.startswith("The audio could not be decoded as WebM (")
    assert why in error.message
    assert sink.ended.is_set()  # what was decoded was finalized first


@pytest.mark.parametrize("encoding", ["webm", "ogg-opus", "mp4", "flac"])
async def test_a_recording_cut_short_gives_what_it_holds(encoding):
    pcm, rate = read_pcm("two_utterances.wav")
    data = encode(pcm, rate, encoding)
    stream, sink = await transcoded(encoding)
    events = await send_all(stream, data[: len(data) // 2] + os.urandom(3000), 1000)
    assert [e.is_partial for e in events] == [False]  # no error: what came, decoded
    # About half of it (containers do not cut their bytes evenly in time).
    assert 0.3 * len(pcm) < len(sink.pcm) < 0.7 * len(pcm)


async def test_the_backlog_counts_compressed_bytes_and_holds_its_limit(settings):
    settings.MAX_AUDIO_BACKLOG_BYTES = 4096
    pcm, rate = read_pcm("two_utterances.wav")
    data = encode(pcm, rate, "webm")
    stream, sink = await transcoded("webm", takes=False)  # the engine takes nothing
    assert audio_backlog_limit(StreamParams(encoding="webm")) == 4096
    sent = 0

    async def send() -> None:
        nonlocal sent
        for piece in chunks(data, 1024):
            await stream.send_audio(piece)
            sent += len(piece)

    sender = asyncio.create_task(send())

    async def stuck() -> None:  # the decoder waits for the engine, the backlog full
        while not (sink.waiting.is_set() and stream.backlog_full()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(stuck(), 10)
    assert not sender.done()  # flow control: the socket would not be read now
    # What the session holds: the backlog's limit, and one read of the decoder.
    assert len(stream._backlog) < 4096 + 1024
    assert sent < len(data)
    await stream.aclose()
    await asyncio.wait_for(sender, 5)  # closing frees the sender
    await asyncio.to_thread(stream._thread.join, 5)  # it said it was done
    assert not stream._thread.is_alive()


async def test_closing_mid_stream_stops_the_decoder_thread():
    stream, sink = await transcoded("webm")
    pcm, rate = read_pcm("hello_world.wav")
    await stream.send_audio(encode(pcm, rate, "webm")[:3000])
    await stream.aclose()
    await asyncio.to_thread(stream._thread.join, 5)  # it said it was done
    assert not stream._thread.is_alive()
    assert sink.closed.is_set()


@pytest.mark.parametrize("decoder_waits", [True, False])
async def test_finalize_reaches_the_engine_after_the_audio_sent_before_it(
    decoder_waits,
):
    """A Finalize mid-stream: the engine's finalize() comes once the audio of the
    bytes before it was decoded and handed on (the decoder waiting for more, or
    still decoding them), not at the end."""
    pcm, rate = read_pcm("two_utterances.wav")
    webm = encode(pcm, rate, "webm")
    half = len(webm) // 2
    stream, sink = await transcoded("webm")
    for piece in chunks(webm[:half], 4096):
        await stream.send_audio(piece)
    if decoder_waits:
        async with asyncio.timeout(10):
            while not stream._waiting or stream._backlog.taken < half:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    await stream.finalize()
    for piece in chunks(webm[half:], 4096):
        await stream.send_audio(piece)
    await stream.end_audio()
    [event async for event in stream.events()]
    await stream.aclose()
    [at] = sink.finalized_at
    assert 0.2 * len(pcm) < at < 0.8 * len(pcm)
    assert at < len(sink.pcm)


async def test_g711_finalize_passes_through_after_its_audio():
    stream, sink = await transcoded("mulaw", rate=8000)
    await stream.send_audio(bytes(8000))  # one second of µ-law
    await stream.finalize()
    assert sink.finalized_at == [16000]
    await stream.aclose()


def decoder_threads() -> float:
    return REGISTRY.get_sample_value("voiceproject_decoder_threads") or 0.0


async def closed(stream) -> None:
    """Closed, and its decoder thread gone (it gives its slot back as it ends)."""
    await stream.aclose()
    await asyncio.to_thread(stream._thread.join, 5)
    assert not stream._thread.is_alive()


async def test_a_process_runs_at_most_max_decoder_threads_container_streams(settings):
    settings.MAX_DECODER_THREADS = decoders.held + 2  # threads other tests left
    gauge = decoder_threads()
    first, _ = await transcoded("webm")
    second, _ = await transcoded("flac")
    assert decoder_threads() == gauge + 2
    opened = []

    async def open_pcm(params: StreamParams) -> PcmSink:
        opened.append(params)
        return PcmSink(params)

    with pytest.raises(EngineError) as raised:
        await open_transcoded(open_pcm, StreamParams(encoding="ogg-opus"))
    error = raised.value
    assert (error.close_code, error.kind) == (1013, "capacity")
    assert error.message == (
        "Server busy: it decodes as many compressed streams (webm, ogg-opus, mp4, "
        f"flac) at once as it may ({settings.MAX_DECODER_THREADS}, "
        "MAX_DECODER_THREADS). Try again later, or send encoding=pcm."
    )
    assert opened == []  # refused before the engine was asked for a stream
    g711, _ = await transcoded("mulaw", rate=8000)  # decoded on the loop: no thread
    await g711.aclose()

    await closed(first)
    assert decoder_threads() == gauge + 1
    third, _ = await transcoded("mp4")  # the freed slot
    for stream in (second, third):
        await closed(stream)
    assert decoder_threads() == gauge
    assert decoders.held == settings.MAX_DECODER_THREADS - 2


async def test_an_engine_that_does_not_open_gives_the_decoder_slot_back(settings):
    settings.MAX_DECODER_THREADS = decoders.held + 1

    async def open_pcm(params: StreamParams) -> PcmSink:
        raise EngineError("no engine")

    with pytest.raises(EngineError, match="no engine"):
        await open_transcoded(open_pcm, StreamParams(encoding="webm"))
    stream, _ = await transcoded("webm")  # the one slot, still free
    await closed(stream)


async def test_a_flac_bomb_decodes_no_more_than_max_session_seconds(settings):
    """Ten minutes of silence in 0.1 MB of FLAC (PCM's 19 MB): a session decodes at
    most MAX_SESSION_SECONDS of audio, then ends (1000, its reason) with the finals
    of what it decoded."""
    settings.MAX_SESSION_SECONDS = 30
    bomb = encode_silence("flac", "flac", 600)
    assert len(bomb) < 600 * 32000 / 100
    stream, sink = await transcoded("flac")
    with pytest.raises(EngineError) as raised:
        await send_all(stream, bomb, 4096)
    error = raised.value
    assert error.close_code == 1000
    assert error.message == "Session reached the longest allowed, 30 seconds of audio."
    assert len(sink.pcm) == 30 * 32000  # to the sample
    assert stream.audio_seconds == 30.0
    assert sink.ended.is_set()


@pytest.mark.parametrize(
    ("encoding", "audio", "why"),
    [
        # More than a speech client sends: hundreds of times the decoding.
        (
            "flac",
            encode_silence("flac", "flac", 2, rate=384000, layout="stereo"),
            "it has 2 channels at 384000 Hz; the most this server decodes is 8 "
            "channels at 192000 Hz",
        ),
        # A codec no browser records in MP4 (FFmpeg decodes hundreds).
        (
            "mp4",
            encode_silence("mp4", "alac", 2),
            "its codec is alac; this server takes aac, opus, flac in MP4",
        ),
    ],
)
async def test_audio_a_speech_client_does_not_send_is_refused_1008(
    encoding, audio, why
):
    stream, sink = await transcoded(encoding)
    with pytest.raises(EngineError) as raised:
        await send_all(stream, audio, 4096)
    error = raised.value
    assert (error.close_code, error.kind) == (1008, "audio")
    assert why in error.message
    assert sink.pcm == b""


async def test_eight_channels_of_opus_decode_to_mono():
    """7.1 is the most a stream may have: decoded, mixed to one channel."""
    audio = encode_silence("ogg", "libopus", 2, rate=48000, layout="7.1")
    stream, sink = await transcoded("ogg-opus")
    events = await send_all(stream, audio, 4096)
    assert [e.is_partial for e in events] == [False]
    assert abs(len(sink.pcm) - 2 * 32000) < 0.05 * 32000
