"""The voice loop through the real ASGI stack: finals → batch → receiver → speech."""

import base64

import pytest
from asgiref.sync import sync_to_async

from tests.audio import mp3_seconds
from tests.helpers import eventually, receive_until_close
from tests.transcription.voice_fakes import HttpReceiver, TcpReceiver
from transcription.models import ReceiverBatch, SessionError, Transcript
from transcription.runtime import worker_runner

# Also on PostgreSQL and the Redis channel layer (the worker in-process there too).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


@pytest.fixture
async def voice(settings):
    """The words engine, a quick backoff, and the in-process worker stopped after."""
    settings.TRANSCRIPTION_ENGINE = "tests.transcription.voice_fakes.WordsEngine"
    settings.SILENCE_SECONDS = 60.0  # only END_OF_STREAM sends, unless a test says
    settings.RECEIVER_RETRY_SECONDS = 0.05
    settings.RECEIVER_TIMEOUT = 5.0
    settings.TTS_ENGINE = "offline"
    settings.VOICE_WORKER_IN_PROCESS = True
    receivers = []

    async def _receiver(reply=None, cls=TcpReceiver):
        receiver = await (cls(reply) if reply else cls()).start()
        receivers.append(receiver)
        if cls is HttpReceiver:
            settings.RECEIVER_URL = receiver.url
        else:
            settings.RECEIVER_HOST, settings.RECEIVER_PORT = "127.0.0.1", receiver.port
        return receiver

    yield _receiver
    await worker_runner.stop_in_process()
    for receiver in receivers:
        await receiver.stop()


async def say(connect, api_token, *finals: bytes, **params):
    """A session: each chunk one final (words engine), END_OF_STREAM, to the close."""
    ws = await connect(token=api_token[1], **params)
    for text in finals:
        await ws.send_to(bytes_data=text)
    await ws.send_to(text_data="END_OF_STREAM")
    return await receive_until_close(ws)


def _batches():
    return list(ReceiverBatch.objects.order_by("created_at"))


def _errors():
    return list(SessionError.objects.values_list("kind", "message"))


async def test_end_of_stream_sends_the_batch_and_speaks_the_reply(
    voice, connect, api_token
):
    receiver = await voice()
    messages, close = await say(
        connect, api_token, b"hello world", b"the weather is nice"
    )

    assert messages[:2] == [
        {"transcript": "hello world"},
        {"transcript": "the weather is nice"},
    ]
    [response] = messages[2:]
    assert response["type"] == "server_response"
    assert response["message"] == "You said hello world / the weather is nice"
    assert mp3_seconds(base64.b64decode(response["audio"])) > 1.0
    assert close["code"] == 1000

    [document] = receiver.documents
    assert set(document) == {"session_id", "batch_id", "language", "transcriptions"}
    assert document["language"] == "en-US"
    assert [t["text"] for t in document["transcriptions"]] == [
        "hello world",
        "the weather is nice",
    ]
    assert all(t["timestamp"].endswith("+00:00") for t in document["transcriptions"])
    [batch] = await sync_to_async(_batches)()
    assert str(batch.batch_id) == document["batch_id"] == response["batch_id"]
    assert str(batch.session_id) == document["session_id"]
    assert batch.status == "delivered"
    assert batch.attempts == 1
    assert batch.reply_text == response["message"]
    assert batch.tts_status == "ok"
    assert bytes(batch.reply_audio) == base64.b64decode(response["audio"])
    batch_ids = await sync_to_async(list)(
        Transcript.objects.values_list("batch_id", flat=True)
    )
    assert batch_ids == [batch.pk, batch.pk]


async def test_a_final_without_words_is_neither_sent_stored_nor_answered(
    voice, connect, api_token
):
    # What Whisper made of 20 s of white noise, and its kin: noise, not speech.
    receiver = await voice()
    messages, close = await say(
        connect, api_token, b". . .", b"~...", b"\xe2\x80\xa6", b" - ", b"?!"
    )
    assert messages == []
    assert close["code"] == 1000
    assert receiver.documents == []
    assert await sync_to_async(_batches)() == []
    assert await Transcript.objects.acount() == 0

    messages, close = await say(connect, api_token, b". . .", b"~hel", b"hello.")
    assert messages[:2] == [{"partialTranscript": "hel"}, {"transcript": "hello."}]
    assert messages[2]["message"] == "You said hello."
    assert [[t["text"] for t in d["transcriptions"]] for d in receiver.documents] == [
        ["hello."]
    ]
    assert await Transcript.objects.acount() == 1


async def test_silence_sends_a_batch_while_the_session_goes_on(
    voice, connect, api_token, settings
):
    receiver = await voice()
    settings.SILENCE_SECONDS = 0.2
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"first thing")
    assert await ws.receive_json_from() == {"transcript": "first thing"}
    response = await ws.receive_json_from(timeout=10)  # no END_OF_STREAM yet
    assert response["message"] == "You said first thing"

    await ws.send_to(bytes_data=b"second thing")
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages[0] == {"transcript": "second thing"}
    assert messages[1]["message"] == "You said second thing"
    assert close["code"] == 1000
    assert [[t["text"] for t in d["transcriptions"]] for d in receiver.documents] == [
        ["first thing"],
        ["second thing"],
    ]
    assert len({d["batch_id"] for d in receiver.documents}) == 2


async def test_http_receiver(voice, connect, api_token):
    receiver = await voice(cls=HttpReceiver)
    messages, close = await say(connect, api_token, b"over http", sendPartials="false")
    assert messages[1]["message"] == "You said over http"
    assert mp3_seconds(base64.b64decode(messages[1]["audio"])) > 0.5
    assert [d["transcriptions"][0]["text"] for d in receiver.documents] == ["over http"]
    assert close["code"] == 1000


async def test_receiver_down_then_back_delivers_once(voice, connect, api_token):
    receiver = await voice()
    port = receiver.port
    await receiver.stop()  # down: connections to its port are refused
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"are you there")
    await ws.send_to(text_data="END_OF_STREAM")
    assert await ws.receive_json_from() == {"transcript": "are you there"}

    await eventually(_errors)  # the first attempt failed
    await receiver.start(port)  # back on the same port
    messages, close = await receive_until_close(ws, wait=15)
    assert [m["message"] for m in messages] == ["You said are you there"]
    assert close["code"] == 1000
    assert len(receiver.documents) == 1
    [batch] = await sync_to_async(_batches)()
    assert batch.status == "delivered"
    assert batch.attempts >= 2
    [(kind, message)] = await sync_to_async(_errors)()
    assert kind == "receiver"
    assert "attempt 1 (retrying)" in message
    assert "unreachable" in message


async def test_reply_after_the_client_left_stays_in_history(
    voice, connect, api_token, settings
):
    receiver = await voice()
    settings.SILENCE_SECONDS = 0.1
    ws = await connect(token=api_token[1])
    await ws.send_to(bytes_data=b"goodbye for now")
    assert await ws.receive_json_from() == {"transcript": "goodbye for now"}
    await ws.disconnect()  # no END_OF_STREAM: the open batch is still due

    [batch] = await eventually(
        lambda: list(ReceiverBatch.objects.filter(status="delivered"))
    )
    assert batch.reply_text == "You said goodbye for now"
    assert len(receiver.documents) == 1


async def test_empty_reply_sends_no_server_response(voice, connect, api_token):
    await voice(lambda document: b"\n")
    messages, close = await say(connect, api_token, b"say nothing")
    assert messages == [{"transcript": "say nothing"}]
    assert close["code"] == 1000
    [batch] = await sync_to_async(_batches)()
    assert (batch.status, batch.reply_text, batch.tts_status) == ("delivered", "", "")
    assert await sync_to_async(_errors)() == []


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"z" * 70000, "larger than the limit"),
        (b"\xff\xfe\n", "not valid UTF-8"),
        (b'{"message": [1, 2]}\n', "non-text message"),
    ],
)
async def test_bad_reply_is_recorded_and_the_session_goes_on(
    voice, connect, api_token, reply, words
):
    await voice(lambda document: reply)
    messages, close = await say(connect, api_token, b"one")
    assert messages == [{"transcript": "one"}]
    assert close["code"] == 1000
    [batch] = await sync_to_async(_batches)()
    assert batch.status == "failed"
    assert batch.attempts == 1  # a bad reply is not retried
    [(kind, message)] = await sync_to_async(_errors)()
    assert kind == "receiver"
    assert words in message


async def test_speech_failure_still_sends_the_text(voice, connect, api_token, settings):
    await voice()
    settings.TTS_ENGINE = "tests.transcription.voice_fakes.BrokenSpeech"
    messages, _ = await say(connect, api_token, b"speak up")
    assert messages[1] == {
        "type": "server_response",
        "message": "You said speak up",
        "audio": None,
        "batch_id": messages[1]["batch_id"],
    }
    [batch] = await sync_to_async(_batches)()
    assert (batch.status, batch.tts_status) == ("delivered", "failed")
    assert "speaker unplugged" in batch.tts_error
    assert [kind for kind, _ in await sync_to_async(_errors)()] == ["tts"]


async def test_no_receiver_no_batches(settings, connect, api_token):
    settings.TRANSCRIPTION_ENGINE = "tests.transcription.voice_fakes.WordsEngine"
    settings.RECEIVER_HOST = settings.RECEIVER_URL = ""
    messages, close = await say(connect, api_token, b"just text")
    assert messages == [{"transcript": "just text"}]
    assert close["code"] == 1000
    assert await sync_to_async(_batches)() == []
