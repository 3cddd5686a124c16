"""Audio for tests: the fixtures as 16-bit mono PCM, frames of it, MP3 measured."""

import io
from pathlib import Path

import soundfile

from transcription.audio_files import read_wav

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_pcm(name: str) -> tuple[bytes, int]:
    """A fixture as 16-bit mono PCM (stereo downmixed) and its sample rate."""
    audio = read_wav(FIXTURES / name)
    return audio.data, audio.sample_rate


def fixture_pcm(name: str) -> bytes:
    """A fixture's 16-bit mono PCM (the fixtures the engines get are 16 kHz)."""
    return read_pcm(name)[0]


def chunks(audio: bytes, size: int = 1024) -> list[bytes]:
    """`audio` in frames of `size` bytes (the last may be shorter)."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def mp3_seconds(audio: bytes) -> float:
    """Decode MP3 for real (libsndfile): the length of the audio in seconds."""
    info = soundfile.info(io.BytesIO(audio))
    assert info.format == "MP3"
    data, rate = soundfile.read(io.BytesIO(audio))
    assert abs(data).max() > 0.01  # not silence
    return len(data) / rate


# How the tests make each encoding a client may send (docs/protocol.md §3): PyAV's
# (format, codec, rate, muxer options), the containers as MediaRecorder's streams are.
ENCODERS = {
    "webm": ("webm", "libopus", 48000, {}),
    "ogg-opus": ("ogg", "libopus", 48000, {"page_duration": "250000"}),
    # Fragmented, as MediaRecorder writes it: a stream needs no seek back to `moov`.
    "mp4": (
        "mp4",
        "aac",
        48000,
        {"movflags": "empty_moov+default_base_moof", "frag_duration": "250000"},
    ),
    "flac": ("flac", "flac", 16000, {}),
    "mulaw": ("mulaw", "pcm_mulaw", 8000, {}),
    "alaw": ("alaw", "pcm_alaw", 8000, {}),
}


def encode(pcm: bytes, rate: int, encoding: str) -> bytes:
    """16-bit mono PCM at `rate` as `encoding` (one of ENCODERS), encoded by PyAV."""
    import av
    import numpy as np

    form, codec, out_rate, options = ENCODERS[encoding]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=form, options=options) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(
            format=stream.format.name, layout="mono", rate=out_rate
        )
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(piece))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_silence(
    form: str,
    codec: str,
    seconds: float,
    *,
    rate: int = 16000,
    layout: str = "mono",
    options: dict[str, str] | None = None,
) -> bytes:
    """`seconds` of silence in `layout` at `rate`, as `codec` in the `form` container,
    encoded by PyAV: a few bytes for much audio (a decompression bomb, for FLAC)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=form, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        channels = len(av.AudioLayout(layout).channels)
        size = stream.frame_size or 4096
        form_ = stream.format
        shape = (channels, size) if form_.is_planar else (1, size * channels)
        frames = int(seconds * rate / size) + 1
        for index in range(frames):
            frame = av.AudioFrame.from_ndarray(
                np.zeros(shape, dtype=_DTYPES[form_.name]),
                format=form_.name,
                layout=layout,
            )
            frame.sample_rate, frame.pts = rate, index * size
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


_DTYPES = {"s16": "<i2", "s16p": "<i2", "s32p": "<i4", "fltp": "<f4", "flt": "<f4"}
