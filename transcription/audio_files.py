"""Audio files for the file client and the REST endpoint: WAV (any rate, mono or
stereo), raw PCM, and (uploads) whatever PyAV decodes: MP3, FLAC, Ogg, WebM, M4A…"""

import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np


@dataclass(frozen=True)
class PcmAudio:
    """16-bit little-endian mono PCM and its sample rate."""

    data: bytes
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.data) / (2 * self.sample_rate)


class AudioFileError(Exception):
    pass


def _to_int16(frames: bytes, width: int) -> np.ndarray:
    if width == 2:
        return np.frombuffer(frames, dtype="<i2")
    if width == 1:  # unsigned 8-bit
        return (
            (np.frombuffer(frames, dtype=np.uint8).astype(np.int16) - 128) << 8
        ).astype(np.int16)
    if width in (3, 4):
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, width)
        # Keep the two most significant bytes of each little-endian sample.
        return raw[:, width - 2 :].copy().view("<i2").reshape(-1)
    raise AudioFileError(f"unsupported sample width: {width} bytes")


def read_wav(path: Path | BinaryIO) -> PcmAudio:
    """A PCM WAV file (8 to 32 bits, any rate, mono or more channels, averaged) as
    mono 16-bit PCM; AudioFileError if it is not one."""
    try:
        with wave.open(str(path) if isinstance(path, Path) else path, "rb") as wav:
            channels, width = wav.getnchannels(), wav.getsampwidth()
            rate = wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"not a PCM WAV file ({exc})") from exc
    samples = _to_int16(frames, width)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
    return PcmAudio(samples.astype("<i2").tobytes(), rate)


def read_pcm(path: Path, *, raw_sample_rate: int | None = None) -> PcmAudio:
    """The file as mono 16-bit PCM; raw files need their sample rate."""
    if raw_sample_rate is not None or path.suffix.lower() in (".raw", ".pcm"):
        if raw_sample_rate is None:
            raise AudioFileError("raw PCM needs --sample-rate")
        return PcmAudio(path.read_bytes(), raw_sample_rate)
    return read_wav(path)


# Uploads other than WAV are decoded to this rate (the engines resample as they need).
DECODED_RATE = 16000


def decode_upload(data: bytes) -> PcmAudio:
    """An uploaded file as mono 16-bit PCM: a PCM WAV read as it is, anything else
    decoded in-process by PyAV (faster-whisper's decoder: no ffmpeg subprocess).
    Blocks (decoding): call it in a thread. AudioFileError if it is no audio."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return read_wav(io.BytesIO(data))
        except AudioFileError:
            pass  # a WAV of another codec (float, A-law…): PyAV knows those too
    return _decode_with_av(data)


def _decode_with_av(data: bytes) -> PcmAudio:
    import av  # a dependency of faster-whisper; imported where it is used

    resampler = av.AudioResampler(format="s16", layout="mono", rate=DECODED_RATE)
    pieces: list[bytes] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFileError("the file has no audio stream")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().astype("<i2").tobytes())
            for out in resampler.resample(None):  # what the resampler still holds
                pieces.append(out.to_ndarray().astype("<i2").tobytes())
    except av.FFmpegError as exc:
        raise AudioFileError(f"the file could not be decoded as audio ({exc})") from exc
    return PcmAudio(b"".join(pieces), DECODED_RATE)
