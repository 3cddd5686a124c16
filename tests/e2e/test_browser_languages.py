"""The Talk page with "Detect the language" (language=auto, issue 22).

Real Chromium whose fake microphone says a Spanish sentence (espeak-ng's voice:
synthetic speech, no licensed human recording is available offline), a real daphne
with the offline engine: the page shows the language the server identified and the
words it heard in it.
"""

import io
import re

import numpy as np
import pytest
import soundfile
import soxr
from playwright import sync_api

from tests.e2e import test_browser
from tests.e2e.servers import run_daphne
from tests.e2e.test_browser import NEEDS_CHROMIUM, chromium, log_in, watch_csp
from tests.e2e.test_languages import SPANISH, _most_words
from transcription.models import AudioSession
from transcription.voice_loop.tts.espeak import speak_mp3

expect = sync_api.expect
password_hash = test_browser.password_hash
person = test_browser.person

pytestmark = [pytest.mark.django_db(transaction=True), NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def spanish_wav(tmp_path_factory):
    """The Spanish sentence, then 3 s of quiet (Chromium loops the file)."""
    data, rate = soundfile.read(io.BytesIO(speak_mp3(SPANISH, "es")), dtype="float32")
    speech = soxr.resample(data, rate, 16000)
    audio = np.concatenate([speech, np.zeros(3 * 16000, np.float32)])
    path = tmp_path_factory.mktemp("audio") / "spanish.wav"
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(spanish_wav):
    with chromium(spanish_wav) as browser:
        yield browser


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as live:
        yield live


def test_the_page_detects_the_language_and_shows_it(browser, server, person):
    context = browser.new_context(
        base_url=server.http_url, permissions=["microphone"], viewport=None
    )
    violations = watch_csp(context)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        log_in(page)
        page.get_by_test_id("language").select_option("auto")
        page.get_by_test_id("start").click()
        detected = page.get_by_test_id("detected-language")
        expect(detected).to_be_visible(timeout=60_000)
        expect(detected).to_have_attribute("data-language", "es-ES")
        expect(detected).to_contain_text(re.compile(r"es-ES \(\d+ % sure\)"))
        finals = page.get_by_test_id("finals")
        expect(finals.locator("li")).not_to_have_count(0, timeout=60_000)
        heard = " ".join(finals.locator("li > span").all_inner_texts())
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("start")).to_be_visible(timeout=60_000)
    finally:
        context.close()
    assert violations == []
    assert _most_words(heard, SPANISH.split(".")[0]), heard
    session = AudioSession.objects.get(user=person)
    assert (session.language, session.detected_language) == ("auto", "es-ES")
