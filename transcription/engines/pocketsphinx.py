"""The pocketsphinx engine: streaming recognition in the decoder pool (light)."""

from __future__ import annotations

from transcription.engines import pocketsphinx_worker
from transcription.engines.pool import DecoderPool, PooledEngine, speech_gate_config
from transcription.engines.transcode import TRANSCODED
from transcription.engines.types import Capabilities


class PocketsphinxEngine(PooledEngine):
    """pocketsphinx en-US, any PCM sample rate (resampled to 16 kHz in the worker),
    and the encodings `transcode` turns into PCM."""

    name = "pocketsphinx"
    capabilities = Capabilities(
        languages=("en-US",),
        encodings=("pcm", *TRANSCODED),
        min_sample_rate=8000,
        max_sample_rate=192000,
        endpointing=True,
    )

    def __init__(self, processes: int | None = None) -> None:
        self.pool = DecoderPool(
            processes, module=pocketsphinx_worker, initargs=(speech_gate_config(),)
        )
