"""A browser's own audio: Chromium's MediaRecorder streams WebM/Opus, chunk by chunk as
it records, to a real daphne (`encoding=webm`), and the page gets the finals.

Chromium's fake microphone plays tests/fixtures/two_utterances.wav in a loop; the page
is a script Playwright injects (the browser app is not involved).
"""

import pytest

from accounts.services import api_token_create
from tests.e2e.servers import run_daphne
from tests.e2e.test_browser import FIXTURE_WAV, NEEDS_CHROMIUM, chromium
from tests.transcription.engine_helpers import LIGHTS, WEATHER, words
from transcription.models import AudioSession

pytestmark = [pytest.mark.django_db(transaction=True), NEEDS_CHROMIUM]

# What a web page does: the microphone into MediaRecorder, each chunk sent as it
# comes (a 250 ms timeslice), END_OF_STREAM once the recorder has stopped.
RECORD = """
async ({url, token}) => {
  window.received = [];
  const microphone = await navigator.mediaDevices.getUserMedia({audio: true});
  const socket = new WebSocket(url, ["token", token]);
  socket.onmessage = (event) => window.received.push(JSON.parse(event.data));
  socket.onclose = (event) => { window.closedWith = event.code; };
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error("the socket did not open"));
  });
  const recorder = new MediaRecorder(
    microphone, {mimeType: "audio/webm;codecs=opus"}
  );
  window.recorder = recorder;
  window.chunksSent = 0;
  recorder.ondataavailable = (event) => {
    if (event.data.size > 0) {
      socket.send(event.data);
      window.chunksSent += 1;
    }
  };
  recorder.onstop = () => socket.send("END_OF_STREAM");
  recorder.start(250);
  return recorder.mimeType;
}
"""
HEARD_LIGHTS = """
() => window.received.some((m) => /lights/i.test(m.transcript || ""))
"""


@pytest.fixture
def browser():
    with chromium(FIXTURE_WAV) as browser:
        yield browser


def test_mediarecorder_chunks_stream_as_webm_and_come_back_as_finals(
    browser, django_user_model
):
    user = django_user_model.objects.create_user(username="lucia")
    token = api_token_create(user=user, name="page")[1]
    env = {"TRANSCRIPTION_ENGINE": "offline", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        context = browser.new_context(permissions=["microphone"])
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{server.http_url}/healthz")  # loopback: a secure context
        mime = page.evaluate(
            RECORD, {"url": f"{server.ws_url}/?encoding=webm", "token": token}
        )
        page.wait_for_function(HEARD_LIGHTS)  # the fixture's second sentence
        page.evaluate("() => window.recorder.stop()")
        page.wait_for_function("() => window.closedWith !== undefined")
        received = page.evaluate("() => window.received")
        closed_with = page.evaluate("() => window.closedWith")
        chunks_sent = page.evaluate("() => window.chunksSent")
        context.close()

    assert mime.startswith("audio/webm")
    assert closed_with == 1000
    assert chunks_sent > 4  # streamed as recorded, not one file at the end
    heard = " ".join(words(m["transcript"]) for m in received if "transcript" in m)
    # The fake microphone loops the fixture: each sentence at least once (in one
    # final or, if a busy machine made Chromium's fake device stutter, across two).
    assert WEATHER in heard, received
    assert LIGHTS in heard, received
    assert "error" not in str(received)
    session = AudioSession.objects.get()
    assert (session.encoding, session.close_code) == ("webm", 1000)
    assert list(session.transcripts.values_list("text", flat=True)) == [
        m["transcript"] for m in received if "transcript" in m
    ]
