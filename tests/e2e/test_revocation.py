"""Revocations made in another process end running sessions within 5 s.

The rule: docs/protocol.md §2.

The server runs with the in-memory channel layer and the default ACCESS_CHECK_SECONDS:
nothing but the database tells it that a token was revoked, a user deactivated or a
browser logged out.
"""

import asyncio
import contextlib
import json
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke
from tests.audio import chunks, read_pcm
from tests.e2e.servers import ROOT, drain, run_daphne, server_env
from tests.helpers import eventually
from tests.transcription.engine_helpers import WEATHER, words
from transcription.models import AudioSession, SessionError

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.services,
]

User = get_user_model()
FRAME = b"\x01\x00" * 512  # 1024 bytes of 16-bit PCM


@pytest.fixture
def token(django_user_model):
    user = django_user_model.objects.create_user(username="carol")
    return api_token_create(user=user, name="e2e")


async def stream_until_closed(ws: ClientConnection) -> None:
    """A microphone: a frame every 0.1 s until the server closes."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(FRAME)
            await asyncio.sleep(0.1)


async def ended_within(ws: ClientConnection, seconds: float) -> list[dict]:
    """The messages up to the server's close, which must come within `seconds`."""
    microphone = asyncio.create_task(stream_until_closed(ws))
    try:
        return await asyncio.wait_for(drain(ws), seconds)
    finally:
        microphone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await microphone


async def start_streaming(ws: ClientConnection) -> None:
    await ws.send(FRAME)
    assert json.loads(await ws.recv()) == {"partialTranscript": "1024 bytes"}


async def session_errors(token_pk: int) -> list[tuple[int | None, str]]:
    """The errors recorded (right after the server closed the socket)."""
    rows = SessionError.objects.filter(session__token_id=token_pk)
    return await eventually(lambda: list(rows.values_list("close_code", "message")))


async def test_revoke_token_command_ends_the_running_session(echo_server, token):
    api_token, raw = token
    url = f"{echo_server.ws_url}/?token={raw}&sendPartials=true"
    async with connect(url) as ws:
        await start_streaming(ws)
        # Another process: the management command, on the same database.
        revoke = await asyncio.create_subprocess_exec(
            sys.executable,
            "manage.py",
            "revoke_token",
            api_token.prefix,
            cwd=ROOT,
            env=server_env(),
            stdout=subprocess.DEVNULL,
        )
        assert await revoke.wait() == 0
        messages = await ended_within(ws, 5)
        assert ws.close_code == 1008
    assert "revoked" in messages[-1]["error"]
    assert await session_errors(api_token.pk) == [(1008, messages[-1]["error"])]


async def test_deactivating_the_user_ends_the_running_session(echo_server, token):
    api_token, raw = token
    headers = {"Authorization": f"Bearer {raw}"}
    async with connect(f"{echo_server.ws_url}/", additional_headers=headers) as ws:
        await start_streaming(ws)
        await User.objects.filter(pk=api_token.user_id).aupdate(is_active=False)
        messages = await ended_within(ws, 5)
        assert ws.close_code == 1008
    assert "deactivated" in messages[-1]["error"]
    assert await session_errors(api_token.pk) == [(1008, messages[-1]["error"])]


async def speak_until_heard(ws: ClientConnection, audio: bytes, rate: int) -> dict:
    """Real speech in real time, until the first message comes back."""

    async def speak() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, piece in enumerate(chunks(audio)):
            await ws.send(piece)
            due = start + (index + 1) * len(piece) / (rate * 2)
            await asyncio.sleep(max(0.0, due - loop.time()))

    speaker = asyncio.create_task(speak())
    try:
        return json.loads(await asyncio.wait_for(ws.recv(), 60))
    finally:
        speaker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await speaker


def revoke(token_pk: int) -> None:
    """What the admin's "revoke" action does to a token."""
    api_token_revoke(token=ApiToken.objects.get(pk=token_pk))


async def test_revoking_ends_a_whisper_session_whose_decoder_has_a_backlog(token):
    """The default engine, decoding for real: the token is revoked while its
    decoder works through a backlog of speech, and the close does not wait for it."""
    api_token, raw = token
    audio, rate = read_pcm("two_utterances.wav")
    env = {"TRANSCRIPTION_ENGINE": "whisper", "OFFLINE_DECODER_PROCESSES": "1"}
    with run_daphne(env) as server:
        url = f"{server.ws_url}/?token={raw}&sampleRate={rate}&sendPartials=false"
        async with connect(url) as ws:
            heard = await speak_until_heard(ws, audio, rate)
            for piece in chunks(audio * 6):  # 43 s of speech at once: a backlog
                await ws.send(piece)
            await sync_to_async(revoke)(api_token.pk)
            messages = await ended_within(ws, 5)
            assert ws.close_code == 1008
    assert words(heard.get("transcript", "")) == WEATHER, heard
    assert messages[-1] == {"error": "Your API token was revoked."}
    assert await session_errors(api_token.pk) == [(1008, messages[-1]["error"])]
    session = await AudioSession.objects.aget(token_id=api_token.pk)
    assert (session.engine, session.status, session.close_code) == (
        "whisper",
        "failed",
        1008,
    )


@pytest.fixture
def cookie_server(transactional_db):
    """The echo server sharing this process's SECRET_KEY, so that it reads the
    sessions that the test's Client logs in."""
    env = {"TRANSCRIPTION_ENGINE": "echo", "DJANGO_SECRET_KEY": settings.SECRET_KEY}
    with run_daphne(env) as server:
        yield server


async def test_logging_out_ends_the_browsers_running_session(cookie_server):
    user = await sync_to_async(User.objects.create_user)(username="dave")
    browser = Client()
    await sync_to_async(browser.force_login)(user)
    name = settings.SESSION_COOKIE_NAME
    cookie = f"{name}={browser.cookies[name].value}"
    headers = {"Cookie": cookie, "Origin": cookie_server.http_url}
    url = f"{cookie_server.ws_url}/?sendPartials=true"
    async with connect(url, additional_headers=headers) as ws:
        await start_streaming(ws)
        await sync_to_async(browser.post)("/accounts/logout/")
        messages = await ended_within(ws, 5)
        assert ws.close_code == 1008
    assert "logged out" in messages[-1]["error"]
    errors = SessionError.objects.filter(session__user=user)
    codes = await eventually(lambda: list(errors.values_list("close_code", flat=True)))
    assert codes == [1008]
