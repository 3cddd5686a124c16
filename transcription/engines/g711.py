"""G.711 (µ-law and A-law, telephony's 8-bit audio) to 16-bit PCM, by table.

G.711 is stateless: each byte is one sample, so a table of 256 values decodes any
chunk as it comes (numpy indexing: microseconds for a frame, fine on the event loop).
`audioop` did this once; it is deprecated and gone in Python 3.13.
"""

from __future__ import annotations

import numpy as np


def _mulaw(byte: int) -> int:
    # ITU-T G.711: the byte is sent inverted; sign, 3-bit exponent, 4-bit mantissa.
    u = ~byte & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if u & 0x80 else magnitude


def _alaw(byte: int) -> int:
    # ITU-T G.711: even bits inverted; a set sign bit is positive.
    a = byte ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    if exponent == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


TABLES: dict[str, np.ndarray] = {
    "mulaw": np.array([_mulaw(b) for b in range(256)], dtype="<i2"),
    "alaw": np.array([_alaw(b) for b in range(256)], dtype="<i2"),
}


def to_pcm(encoding: str, chunk: bytes) -> bytes:
    """`chunk` of G.711 `encoding` ("mulaw" or "alaw") as 16-bit little-endian PCM."""
    return TABLES[encoding][np.frombuffer(chunk, dtype=np.uint8)].tobytes()
