"""The Whisper engine: faster-whisper (CTranslate2) in a pool of worker processes.

The pool, the sessions pinned to a process and the flow control are the offline
engines' (`pool.PooledEngine`); `whisper_worker` decodes. The weights are
WHISPER_MODEL: by default the bundled tiny.en, checked against its pinned SHA-256
before any process loads it; a faster-whisper model name is downloaded once, here,
before the processes start (deployments that may reach the model hub).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from transcription.close_codes import CLOSE_SERVER_ERROR
from transcription.engines import whisper_multilingual, whisper_worker
from transcription.engines.pool import (
    DECODER_START_POOL,
    DecoderPool,
    PooledEngine,
    speech_gate_config,
)
from transcription.engines.transcode import TRANSCODED
from transcription.engines.types import Capabilities, EngineError, StreamParams
from transcription.engines.whisper_model import (
    ModelError,
    ModelSource,
    client_languages,
    model_source,
    verify,
)
from transcription.executors import run_blocking

if TYPE_CHECKING:
    from transcription.engines import SpeechToText

logger = logging.getLogger(__name__)

# A call that carries more audio than this means the session is behind real time:
# its partials are skipped (each one re-decodes the utterance) until it catches up.
PARTIALS_BEHIND_SECONDS = 0.75


def compute_type(device: str, setting: str) -> str:
    """WHISPER_COMPUTE_TYPE, or int8 on CPU and the model's own type elsewhere."""
    return setting or ("int8" if device == "cpu" else "default")


class WhisperEngine(PooledEngine):
    """Whisper: English with the bundled tiny.en and every other language Whisper
    knows with the bundled multilingual base (WHISPER_MULTILINGUAL), or the
    client's language with a multilingual WHISPER_MODEL; any PCM sample rate
    (resampled to 16 kHz)."""

    name = "whisper"
    partials_behind_seconds = PARTIALS_BEHIND_SECONDS

    def __init__(self, processes: int | None = None) -> None:
        self.pool = DecoderPool(processes, module=whisper_worker)
        self._config: dict[str, Any] | None = None
        try:
            self.source: ModelSource | None = model_source(settings.WHISPER_MODEL)
        except ModelError as error:
            logger.error("Whisper engine unusable: %s", error)
            self.source = None
        # The bundled tiny.en is joined by the bundled base for other languages.
        self.multilingual = bool(
            self.source
            and self.source.sha256
            and self.source.english_only
            and settings.WHISPER_MULTILINGUAL
            and whisper_multilingual.installed()
        )
        english_only = (
            self.source is None or self.source.english_only
        ) and not self.multilingual
        self.capabilities = Capabilities(
            languages=client_languages(english_only=english_only),
            encodings=("pcm", *TRANSCODED),
            min_sample_rate=8000,
            max_sample_rate=192000,
            identifies_language=not english_only,
            endpointing=True,
        )

    async def warm_up(self) -> None:
        await self._ready()
        await super().warm_up()

    async def open(self, params: StreamParams) -> SpeechToText:
        await self._ready()
        return await super().open(params)

    async def _ready(self) -> None:
        """Check (or fetch) the weights once, before any process loads them."""
        if self._config is not None:
            return
        try:
            config = await run_blocking(DECODER_START_POOL, self._prepare)
        except ModelError as error:
            logger.error("Whisper engine unusable: %s", error)
            raise EngineError(
                "Transcription is unavailable: the speech model cannot be loaded.",
                close_code=CLOSE_SERVER_ERROR,
            ) from error
        if self._config is None:
            self._config = config
            self.pool.initargs = (config,)

    def _prepare(self) -> dict[str, Any]:
        """The worker processes' configuration (blocking: hashing, downloading)."""
        source = self.source or model_source(settings.WHISPER_MODEL)  # re-raises
        location = source.location
        if source.sha256:
            verify(location, source.sha256)
        elif not source.is_directory:
            from faster_whisper.utils import download_model

            try:
                location = download_model(location)
            except Exception as error:
                raise ModelError(
                    f"Whisper model {location!r} could not be downloaded: {error}"
                ) from error
        multilingual = None
        if self.multilingual:
            cache = Path(settings.WHISPER_CACHE_DIR)
            multilingual = {
                "location": str(whisper_multilingual.model_dir(cache)),
                "sha256": whisper_multilingual.SHA256,
                "distribution": whisper_multilingual.DISTRIBUTION_HINT,
            }
        device = settings.WHISPER_DEVICE
        return {
            "multilingual": multilingual,
            "location": location,
            "sha256": source.sha256,
            "device": device,
            "compute_type": compute_type(device, settings.WHISPER_COMPUTE_TYPE),
            "cpu_threads": settings.WHISPER_CPU_THREADS,
            "gate": speech_gate_config(),
            "thresholds": {
                "no_speech": settings.WHISPER_NO_SPEECH_THRESHOLD,
                "log_prob": settings.WHISPER_LOG_PROB_THRESHOLD,
                "compression_ratio": settings.WHISPER_COMPRESSION_RATIO_THRESHOLD,
            },
        }
