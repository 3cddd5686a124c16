"""WebSocket authentication by a logged-in cookie session, checked against Origin."""

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from tests.conftest import receive_until_close

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("echo_engine"),
]


@pytest.fixture
def session_cookie(user):
    client = Client()
    assert client.login(username="alice", password="pw-alice-1")
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def _open(cookie: str, origin: str | None):
    from voiceproject.asgi import application

    headers = [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]
    if origin:
        headers.append((b"origin", origin.encode()))
    ws = WebsocketCommunicator(application, "/?sendPartials=false", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def test_logged_in_browser_from_allowed_origin_needs_no_token(session_cookie):
    ws = await _open(session_cookie, "http://127.0.0.1:8765")
    await ws.send_to(bytes_data=b"\0" * 64)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    assert messages == [{"transcript": "received 64 bytes"}]
    assert close["code"] == 1000


@pytest.mark.parametrize("origin", ["https://evil.example", None])
async def test_cookie_session_from_other_or_no_origin_is_refused(
    session_cookie, origin
):
    ws = await _open(session_cookie, origin)
    output = await ws.receive_output(5)
    error = json.loads(output["text"])["error"]
    assert "Origin" in error
    close = await ws.receive_output(5)
    assert close["code"] == 1008
