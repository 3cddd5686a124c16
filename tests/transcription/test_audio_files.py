"""Reading audio files for the file client."""

import wave

import numpy as np
import pytest

from transcription.audio_files import AudioFileError, read_pcm


def _wav(path, samples: np.ndarray, *, rate: int, width: int, channels: int):
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def test_stereo_is_mixed_down_to_mono(tmp_path):
    left = np.full(100, 1000, dtype="<i2")
    right = np.full(100, 3000, dtype="<i2")
    path = _wav(
        tmp_path / "s.wav",
        np.column_stack([left, right]).reshape(-1),
        rate=44100,
        width=2,
        channels=2,
    )
    audio = read_pcm(path)
    assert audio.sample_rate == 44100
    assert np.frombuffer(audio.data, dtype="<i2").tolist() == [2000] * 100
    assert audio.seconds == pytest.approx(100 / 44100)


def test_8_and_24_bit_samples_become_16_bit(tmp_path):
    eight = _wav(
        tmp_path / "8.wav",
        np.array([0, 128, 255], np.uint8),
        rate=8000,
        width=1,
        channels=1,
    )
    assert np.frombuffer(read_pcm(eight).data, "<i2").tolist() == [-32768, 0, 32512]
    # 24-bit little-endian 0x123456 keeps its two most significant bytes, 0x1234.
    raw24 = np.array([0x56, 0x34, 0x12], np.uint8)
    wide = _wav(tmp_path / "24.wav", raw24, rate=16000, width=3, channels=1)
    assert np.frombuffer(read_pcm(wide).data, "<i2").tolist() == [0x1234]


def test_raw_pcm_needs_its_rate(tmp_path):
    path = tmp_path / "a.raw"
    path.write_bytes(b"\1\0" * 10)
    with pytest.raises(AudioFileError, match="--sample-rate"):
        read_pcm(path)
    audio = read_pcm(path, raw_sample_rate=8000)
    assert audio.sample_rate == 8000
    assert audio.data == b"\1\0" * 10


def test_a_file_that_is_not_wav_is_a_clear_error(tmp_path):
    path = tmp_path / "x.wav"
    path.write_bytes(b"not audio at all")
    with pytest.raises(AudioFileError, match="not a PCM WAV"):
        read_pcm(path)
