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
