"""Browser-safe authentication through a real daphne: the token as a subprotocol,
short-lived grants from POST /api/grants (docs/protocol.md §2)."""

import asyncio
import json
import re

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.models import ApiToken, SessionGrant
from accounts.services import api_token_create, api_token_revoke
from tests.audio import chunks, read_pcm
from tests.e2e.servers import run_daphne
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)

GRANT_SECONDS = 2


@pytest.fixture
def user(django_user_model):
    # The server's real settings check PBKDF2, not the tests' fast MD5 hasher.
    hasher = PBKDF2PasswordHasher()
    password = hasher.encode("pw-dora-1", hasher.salt())
    return django_user_model.objects.create(username="dora", password=password)


@pytest.fixture
def raw_token(user):
    return api_token_create(user=user, name="e2e")[1]


@pytest.fixture
def server(transactional_db):
    env = {"TRANSCRIPTION_ENGINE": "echo", "GRANT_SECONDS": str(GRANT_SECONDS)}
    with run_daphne(env) as live:
        yield live


async def stream(url: str, credential: str) -> tuple[str | None, list[dict], int]:
    """The subprotocol the server chose, its messages and the close code."""
    audio, _ = read_pcm("hello_world.wav")
    async with connect(url, subprotocols=["token", credential]) as ws:
        messages: list[dict] = []

        async def receive() -> None:
            try:
                async for message in ws:
                    messages.append(json.loads(message))
            except ConnectionClosed:
                pass

        receiver = asyncio.create_task(receive())
        try:
            for piece in chunks(audio):
                await ws.send(piece)
            await ws.send("END_OF_STREAM")
        except ConnectionClosed:
            pass  # refused: what it said is read all the same
        await receiver
    return ws.subprotocol, messages, ws.close_code or 1006


def post_grant(server, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.http_url}/api/grants", timeout=10, **kwargs)


async def test_the_token_as_a_subprotocol_streams_and_is_never_logged(
    server, raw_token
):
    chosen, messages, code = await stream(f"{server.ws_url}/", raw_token)
    assert chosen == "token"
    assert messages[-1] == {"transcript": "received 43846 bytes"}
    assert code == 1000
    session = await AudioSession.objects.aget()
    assert session.auth_method == "token"
    assert raw_token not in server.output()


async def test_a_bad_subprotocol_token_gets_the_subprotocol_and_the_refusal(server):
    chosen, messages, code = await stream(
        f"{server.ws_url}/", "vp_no-such-token-at-all"
    )
    assert chosen == "token"  # or the browser could not read why
    assert messages == [{"error": "Invalid token: it is unknown, revoked or expired."}]
    assert code == 1008


async def test_a_grant_opens_sessions_until_it_expires(server, raw_token, user):
    response = await asyncio.to_thread(
        post_grant, server, headers={"Authorization": f"Bearer {raw_token}"}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["expires_in"] == GRANT_SECONDS
    grant = body["token"]
    assert grant.startswith("vp_grant_")
    stored = await SessionGrant.objects.aget()
    assert grant not in (stored.digest, stored.prefix)  # never stored raw

    chosen, messages, code = await stream(f"{server.ws_url}/", grant)
    assert (chosen, code) == ("token", 1000)
    assert messages[-1] == {"transcript": "received 43846 bytes"}
    session = await AudioSession.objects.select_related("token").aget()
    assert session.auth_method == "grant"
    assert session.user_id == user.pk
    assert session.token is not None
    assert session.token.name == "e2e"

    await asyncio.sleep(GRANT_SECONDS + 0.5)  # the grant's lifetime, not a speed
    _, messages, code = await stream(f"{server.ws_url}/", grant)
    assert messages == [{"error": "Invalid token: it is unknown, revoked or expired."}]
    assert code == 1008
    output = server.output()
    assert grant not in output
    assert raw_token not in output


async def test_a_grant_is_no_api_token_and_ends_with_its_token(server, raw_token):
    grant = (
        await asyncio.to_thread(
            post_grant, server, headers={"Authorization": f"Bearer {raw_token}"}
        )
    ).json()["token"]
    # A grant cannot ask for more grants (nor call the HTTP API).
    response = await asyncio.to_thread(
        post_grant, server, headers={"Authorization": f"Bearer {grant}"}
    )
    assert response.status_code == 401
    token = await ApiToken.objects.aget()
    await asyncio.to_thread(api_token_revoke, token=token)
    _, _, code = await stream(f"{server.ws_url}/", grant)
    assert code == 1008  # its token revoked: the grant no longer opens sessions


def test_grants_refuse_bad_credentials_in_openais_error_shape(server):
    response = post_grant(server, headers={"Authorization": "Bearer vp_not-a-token-x"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"] == "Invalid token: it is unknown, revoked or expired."
    assert set(error) == {"message", "type", "param", "code"}
    assert post_grant(server).status_code == 401  # no credentials at all
    assert httpx.get(f"{server.http_url}/api/grants").status_code == 405


def test_a_logged_in_browser_session_needs_its_csrf_token(server, user):
    with httpx.Client(base_url=server.http_url, timeout=10) as browser:
        page = browser.get("/accounts/login/")
        form_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert form_token is not None
        login = browser.post(
            "/accounts/login/",
            data={
                "username": "dora",
                "password": "pw-dora-1",
                "csrfmiddlewaretoken": form_token.group(1),
            },
            headers={"Referer": f"{server.http_url}/accounts/login/"},
        )
        assert login.status_code == 302
        origin = {"Origin": server.http_url}
        refused = browser.post("/api/grants", headers=origin)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_failed"
        csrf = browser.cookies["csrftoken"]
        granted = browser.post("/api/grants", headers={**origin, "X-CSRFToken": csrf})
        assert granted.status_code == 200
        assert granted.json()["token"].startswith("vp_grant_")


def test_failed_grant_requests_are_throttled(transactional_db):
    env = {
        "TRANSCRIPTION_ENGINE": "echo",
        "AUTH_FAILURES_PER_MINUTE": "2",
        "AUTH_FAILURE_DELAY_SECONDS": "0",
    }
    with run_daphne(env) as server:
        bad = {"Authorization": "Bearer vp_not-a-token-x"}
        statuses = [post_grant(server, headers=bad).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
