"""Languages offline through a real daphne: Whisper base beside tiny.en.

The Spanish and Swedish here are espeak-ng's (synthetic): they show that the
languages are accepted and decoded, not how well. Accuracy needs licensed human
recordings, which no package this project may use ships (issue 22, open).
"""

import pytest
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import drain, run_daphne
from tests.e2e.test_whisper_engine import stream
from tests.transcription.test_whisper_multilingual import _espeak_pcm
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)

SPEECH = {
    "es-ES": ("Hola, buenos días. ¿Cómo estás hoy?", "es"),
    "sv-SE": ("God morgon. Hur mår du idag?", "sv"),
}


@pytest.fixture
def raw_token(django_user_model):
    user = django_user_model.objects.create_user(username="ines")
    return api_token_create(user=user, name="e2e")[1]


async def test_spanish_and_swedish_are_taken_and_others_refused(raw_token):
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        for language, (text, voice) in SPEECH.items():
            url = f"{server.ws_url}/?token={raw_token}&language={language}"
            messages = await stream(url, _espeak_pcm(text, voice), 16000, 4.0)
            assert [m for m in messages if m.get("transcript")], language
            assert not [m for m in messages if "error" in m]
        async with connect(f"{server.ws_url}/?token={raw_token}&language=zu-ZA") as ws:
            refused = await drain(ws)
            assert ws.close_code == 1008
    assert "Unsupported language 'zu-ZA'" in refused[-1]["error"]
    assert "es-ES" in refused[-1]["error"]
    languages = [s.language async for s in AudioSession.objects.all()]
    assert sorted(languages) == ["", "es-ES", "sv-SE"]  # the refused one: none
