"""Sounds that are not speech, made here with fixed seeds: the same bytes every run.

Each is 16 kHz mono float32 in [-1, 1]; `pcm()` makes it 16-bit PCM. The levels are
a loud room's, well above the endpointer's threshold, so that each reaches the
decoders' gate (pocketsphinx's endpointer takes all but the clicks for speech).
"""

import numpy as np

RATE = 16000


def white(seconds: float, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(21)
    return rng.standard_normal(int(seconds * RATE)) * level


def pink(seconds: float, level: float = 0.1) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    count = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(22).standard_normal(count))
    frequencies = np.fft.rfftfreq(count, 1 / RATE)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / np.sqrt(frequencies), count)
    return noise / noise.std() * level


def hum(seconds: float) -> np.ndarray:
    """Mains hum: 50 Hz and its odd harmonics."""
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(
        amplitude * np.sin(2 * np.pi * 50 * k * t)
        for k, amplitude in ((1, 0.3), (3, 0.1), (5, 0.05))
    )


def clicks(seconds: float) -> np.ndarray:
    """Two clicks a second (2 ms bursts) on a faint hiss."""
    rng = np.random.default_rng(24)
    out = rng.standard_normal(int(seconds * RATE)) * 0.002
    for start in rng.integers(0, len(out) - 32, int(seconds * 2)):
        out[start : start + 32] += rng.uniform(-0.8, 0.8, 32)
    return out


def tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * frequency * t)


def music(seconds: float) -> np.ndarray:
    """Plucked notes of a C major scale, four a second, five harmonics each."""
    rng = np.random.default_rng(26)
    t = np.arange(RATE // 4) / RATE
    scale = (261.6, 293.7, 329.6, 349.2, 392.0, 440.0, 493.9, 523.3)
    notes = [
        sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6))
        * np.exp(-6 * t)
        * 0.2
        for f in rng.choice(scale, int(seconds * 4))
    ]
    return np.concatenate(notes)


NOISES = {
    "white": white,
    "pink": pink,
    "hum": hum,
    "clicks": clicks,
    "tone": tone,
    "music": music,
}


def noise(name: str, seconds: float) -> np.ndarray:
    return NOISES[name](seconds)


def pcm(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] as 16-bit little-endian PCM."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def samples_of(pcm_bytes: bytes) -> np.ndarray:
    return np.frombuffer(pcm_bytes, dtype="<i2").astype(np.float32) / 32768


def mixed(speech: bytes, background: np.ndarray, snr_db: float) -> bytes:
    """`speech` (16-bit PCM) over `background` at a signal-to-noise ratio, in dB, of
    the speech's active part (what is louder than a hundredth of its peak)."""
    voice = samples_of(speech)
    active = voice[np.abs(voice) > 0.01 * np.abs(voice).max()]
    gain = np.sqrt(np.mean(active**2) / np.mean(background[: len(voice)] ** 2))
    return pcm(voice + background[: len(voice)] * gain / 10 ** (snr_db / 20))
