"""StreamSession apart from any socket: its states, a transport swapped mid-session."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from accounts.middleware import AUTH_REFUSALS
from accounts.services import api_token_revoke
from tests.helpers import eventually, until
from tests.transcription.fake_engines import BusyDecoderEngine, IdentifyingEngine
from transcription.engines.echo import EchoEngine
from transcription.models import AudioSession, SessionError, Transcript
from transcription.runtime import capacity
from transcription.streaming.access import Grant
from transcription.streaming.admission import Client
from transcription.streaming.session import State, StreamSession

pytestmark = pytest.mark.django_db(transaction=True)


class RecordingTransport:
    """A Transport that keeps what the session sends it."""

    def __init__(self, name: str) -> None:
        self.channel_layer = get_channel_layer()
        self.channel_name = f"test.{name}"
        self.gone = asyncio.Event()
        self.messages: list[dict] = []
        self.closed: tuple[int, str | None] | None = None

    async def send_text(self, text: str) -> None:
        self.messages.append(json.loads(text))

    async def close(self, code: int, reason: str | None) -> None:
        self.closed = (code, reason)


def token_client(api_token, *, watched: bool = False) -> Client:
    """The client of `api_token`; `watched`: its access is watched (revocation)."""
    token, _ = api_token
    grant = Grant(token_id=token.pk, user_id=token.user_id) if watched else None
    return Client(
        auth_method="token", user=token.user, token=token, address="", grant=grant
    )


async def test_a_session_goes_on_over_a_new_transport(api_token):
    session = StreamSession(
        client=await sync_to_async(token_client)(api_token),
        query_string=b"sampleRate=16000",
        engine=EchoEngine(),
    )
    first, second = RecordingTransport("first"), RecordingTransport("second")
    await session.open(first)
    assert session.state is State.STREAMING
    await session.receive_audio(b"\0" * 1000)
    await until(lambda: len(first.messages) == 1)

    await session.detach()
    await session.receive_audio(b"\0" * 500)  # sent while no transport carries it
    await until(lambda: session.sent == 2)
    assert session.state is State.STREAMING
    await session.attach(second)
    await session.receive_audio(b"\0" * 250)
    await session.receive_text("END_OF_STREAM")
    assert session.supervisor is not None
    await asyncio.wait_for(session.supervisor, 10)

    assert first.messages == [{"partialTranscript": "1000 bytes"}]
    assert first.closed is None
    assert second.messages == [
        {"partialTranscript": "1500 bytes"},  # kept for the next transport
        {"partialTranscript": "1750 bytes"},
        {"transcript": "received 1750 bytes"},
    ]
    assert second.closed == (1000, None)
    assert session.state is State.CLOSED
    record = await AudioSession.objects.aget(pk=session.session_id)
    assert (record.status, record.close_code, record.audio_bytes) == (
        "completed",
        1000,
        1750,
    )
    texts = [t async for t in Transcript.objects.values_list("text", flat=True)]
    assert texts == ["received 1750 bytes"]


@pytest.mark.parametrize(
    ("auth_method", "query"),
    [
        (None, b""),
        ("bad_token", b""),
        ("bad_origin", b""),
        (None, b"sampleRate=fast"),  # bad parameters too: credentials come first
    ],
)
async def test_an_unauthenticated_client_is_refused_and_never_recorded(
    auth_method, query
):
    session = StreamSession(
        client=Client(
            auth_method=auth_method, user=None, token=None, address="", grant=None
        ),
        query_string=query,
        engine=EchoEngine(),
    )
    transport = RecordingTransport("refused")
    await session.open(transport)
    assert session.state is State.CLOSED
    assert session.supervisor is None
    assert transport.messages == [{"error": AUTH_REFUSALS[auth_method]}]
    assert transport.closed == (1008, None)
    assert session.session_id is None
    assert await AudioSession.objects.acount() == 0
    assert await SessionError.objects.acount() == 0
    assert capacity.open_count() == 0


async def test_an_authenticated_client_with_bad_parameters_is_recorded(api_token):
    session = StreamSession(
        client=await sync_to_async(token_client)(api_token),
        query_string=b"sampleRate=fast",
        engine=EchoEngine(),
    )
    transport = RecordingTransport("bad parameters")
    await session.open(transport)
    assert "sampleRate" in transport.messages[0]["error"]
    record = await AudioSession.objects.aget(pk=session.session_id)
    assert (record.status, record.close_code) == ("rejected", 1008)
    kinds = [k async for k in SessionError.objects.values_list("kind", flat=True)]
    assert kinds == ["parameters"]


async def test_state_moves_only_forward(api_token):
    session = StreamSession(
        client=await sync_to_async(token_client)(api_token),
        query_string=b"",
        engine=EchoEngine(),
    )
    await session.open(RecordingTransport("forward"))
    with pytest.raises(RuntimeError):
        session._enter(State.CONNECTING)
    await session.transport_lost(1006)
    assert session.state is State.CLOSED
    record = await AudioSession.objects.aget(pk=session.session_id)
    assert (record.close_code, record.close_reason) == (1006, "client disconnected")


async def test_a_throttled_client_waits_holding_no_slot_then_is_refused(settings):
    settings.AUTH_FAILURE_DELAY_SECONDS = 0.3
    session = StreamSession(
        client=Client(
            auth_method="throttled", user=None, token=None, address="", grant=None
        ),
        query_string=b"",
        engine=EchoEngine(),
    )
    transport = RecordingTransport("throttled")
    loop = asyncio.get_running_loop()
    started = loop.time()
    opening = asyncio.create_task(session.open(transport))
    await asyncio.sleep(0.1)
    assert not opening.done()  # the delay…
    assert transport.messages == []
    assert capacity.open_count() == 0  # …costs the process no slot
    await opening
    assert loop.time() - started >= 0.3
    assert transport.messages == [{"error": AUTH_REFUSALS["throttled"]}]
    assert transport.closed == (1008, None)
    assert session.state is State.CLOSED
    assert session.session_id is None
    assert await AudioSession.objects.acount() == 0
    assert capacity.open_count() == 0


@pytest.mark.parametrize("flushing", [False, True], ids=["streaming", "flushing"])
async def test_a_revocation_closes_the_session_while_its_decoder_is_busy(
    api_token, settings, flushing
):
    """The close reaches the client within seconds, whatever the engine is doing:
    here its decoder is in the middle of a call that ends only when the test lets
    it, so the engine cannot let go of the session before then."""
    settings.ACCESS_CHECK_SECONDS = 0.05
    engine = BusyDecoderEngine()
    session = StreamSession(
        client=await sync_to_async(token_client)(api_token, watched=True),
        query_string=b"sampleRate=16000",
        engine=engine,
    )
    transport = RecordingTransport("revoked")
    await session.open(transport)
    try:
        await session.receive_audio(b"\0" * 3200)
        await until(engine.decoder.busy.is_set)
        if flushing:
            await session.receive_text("END_OF_STREAM")
            assert session.state is State.FLUSHING
        await sync_to_async(api_token_revoke)(token=api_token[0])

        await until(lambda: transport.closed is not None, 5)
        assert transport.messages == [{"error": "Your API token was revoked."}]
        assert transport.closed == (1008, None)
        records = AudioSession.objects.filter(pk=session.session_id)
        assert await eventually(lambda: list(records.values_list("close_code"))) == [
            (1008,)
        ]
        assert not engine.decoder.free.is_set()  # none of it waited for the decoder
    finally:
        engine.decoder.free.set()
    assert session.supervisor is not None
    await asyncio.wait_for(session.supervisor, 10)
    record = await records.aget()
    assert record.status == "failed"
    errors = SessionError.objects.filter(session=record)
    assert [e async for e in errors.values_list("close_code", "kind", "message")] == [
        (1008, "revoked", "Your API token was revoked.")
    ]
    assert capacity.open_count() == 0
    engine.executor.shutdown()


def _identified(language: str) -> float:
    labels = {"language": language, "sure": "true"}
    name = "voiceproject_languages_identified_total"
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _auto_session(api_token, query: bytes) -> tuple[RecordingTransport, str]:
    session = StreamSession(
        client=await sync_to_async(token_client)(api_token),
        query_string=query,
        engine=IdentifyingEngine(),
    )
    transport = RecordingTransport("auto")
    await session.open(transport)
    await session.end_audio()
    await until(lambda: transport.closed is not None)
    return transport, str(session.session_id)


async def test_the_language_identified_is_sent_once_and_stored_first(api_token):
    before = _identified("sv-SE")
    transport, session_id = await _auto_session(api_token, b"language=auto")
    assert transport.messages == [
        {"type": "language", "language": "sv-SE", "probability": 0.97},
        {"transcript": "hej hej"},
    ]
    row = await AudioSession.objects.aget(pk=session_id)
    assert (row.language, row.detected_language) == ("auto", "sv-SE")
    assert row.language_probability == 0.97
    assert row.spoken_language == "sv-SE"
    assert _identified("sv-SE") == before + 1


async def test_a_session_that_asks_a_language_gets_no_language_message(api_token):
    transport, session_id = await _auto_session(api_token, b"language=sv-SE")
    assert transport.messages == [{"transcript": "hej hej"}]
    row = await AudioSession.objects.aget(pk=session_id)
    assert (row.language, row.detected_language) == ("sv-SE", "")


async def test_a_language_not_stored_at_once_is_stored_at_the_end(
    api_token, monkeypatch
):
    from django.db import OperationalError

    from transcription import services

    real = services.session_language_identified
    calls = []

    def fails_once(**kwargs):
        calls.append(kwargs["language"])
        if len(calls) == 1:
            raise OperationalError("the database went away")
        real(**kwargs)

    monkeypatch.setattr(services, "session_language_identified", fails_once)
    transport, session_id = await _auto_session(api_token, b"language=auto")
    assert transport.messages[0]["language"] == "sv-SE"  # sent all the same
    await eventually(
        lambda: AudioSession.objects.filter(
            pk=session_id, detected_language="sv-SE"
        ).exists()
    )
    assert calls == ["sv-SE", "sv-SE"]
