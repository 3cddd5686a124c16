"""The offline voice end to end: a reply spoken by Piper, heard back by Whisper.

One daphne runs the voice loop (words in as text, the reply spoken by
TTS_ENGINE=offline); a second daphne runs the offline speech-to-text engine
(Whisper tiny.en), and the reply's MP3, decoded and resampled to 16 kHz, is
streamed to it: it must give the reply's words.
"""

import base64
import io

import numpy as np
import pytest
import soundfile
import soxr

from tests.e2e.servers import run_daphne
from tests.e2e.test_voice_loop import _talk, _tcp_env, raw_token, voice_server
from tests.e2e.test_whisper_engine import stream
from tests.transcription.engine_helpers import LIGHTS, WEATHER, words
from tests.transcription.voice_fakes import TcpReceiver
from transcription.models import ReceiverBatch

pytestmark = pytest.mark.django_db(transaction=True)

__all__ = ["raw_token"]  # the fixture, shared with the voice loop's tests

RATE = 16000


def mp3_to_pcm(audio: bytes) -> bytes:
    """MP3 decoded (libsndfile), resampled to 16 kHz mono 16-bit PCM."""
    data, rate = soundfile.read(io.BytesIO(audio), dtype="float32")
    resampled = soxr.resample(data, rate, RATE)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


async def test_a_piper_reply_is_heard_back_word_for_word(raw_token):
    receiver = await TcpReceiver().start()
    try:
        with voice_server(_tcp_env(receiver)) as server:
            messages, code = await _talk(server, raw_token, f"{WEATHER}. {LIGHTS}")
    finally:
        await receiver.stop()
    assert code == 1000
    response = messages[-1]
    assert response["message"] == f"You said {WEATHER}. {LIGHTS}"
    batch = await ReceiverBatch.objects.aget()
    assert (batch.tts_engine, batch.tts_status) == ("piper", "ok")

    pcm = mp3_to_pcm(base64.b64decode(response["audio"]))
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as whisper:
        heard = await stream(f"{whisper.ws_url}/?token={raw_token}", pcm, RATE, 4.0)
    finals = " ".join(m["transcript"] for m in heard if "transcript" in m)
    assert words(finals) == f"you said {WEATHER} {LIGHTS}"
