"""Authentication against a real daphne on loopback, with a real WebSocket client."""

import http.client
from urllib.parse import quote

import pytest
from django.conf import settings
from django.test import Client
from websockets.asyncio.client import connect

from tests.e2e.servers import drain, run_daphne

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

TRUSTED = "https://app.example"


@pytest.fixture
def server(transactional_db):
    env = {
        "TRANSCRIPTION_ENGINE": "echo",
        "DJANGO_CSRF_TRUSTED_ORIGINS": TRUSTED,
        # The same key as this process, so the sessions made here are valid there.
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
    }
    with run_daphne(env) as server:
        yield server


@pytest.fixture
def cookie(user) -> str:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


async def _session(
    server, cookie: str, origin: str | None, *, talk: bool = True
) -> tuple[list[dict], int]:
    headers = {"Cookie": cookie}
    if origin is not None:
        headers["Origin"] = origin
    async with connect(
        f"{server.ws_url}/?sendPartials=false", additional_headers=headers
    ) as ws:
        if talk:  # not to a refused session: its close could meet our frames
            await ws.send(b"\0" * 64)
            await ws.send("END_OF_STREAM")
        messages = await drain(ws)
        assert ws.close_code is not None
        return messages, ws.close_code


async def test_cookie_sessions_only_from_this_origin_or_a_listed_one(server, cookie):
    own = server.http_url  # http://127.0.0.1:PORT
    for origin in (own, TRUSTED):
        messages, code = await _session(server, cookie, origin)
        assert (messages, code) == ([{"transcript": "received 64 bytes"}], 1000)
    other_port = 3999 if server.port != 3999 else 4000
    for origin in (
        f"http://127.0.0.1:{other_port}",
        own.replace("http://", "https://"),
        "null",
        None,
    ):
        messages, code = await _session(server, cookie, origin, talk=False)
        assert code == 1008, origin
        assert messages[0]["error"].startswith("Origin not allowed"), origin


def _get(server, path: str) -> tuple[int, str, str]:
    """(status, Location, body) of one GET, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return (
            response.status,
            response.getheader("Location") or "",
            (response.read().decode(errors="replace")),
        )
    finally:
        connection.close()


async def test_a_raw_token_is_nowhere_in_redirects_pages_or_the_server_output(
    server, api_token
):
    _, raw = api_token
    starts = [
        f"/?token={raw}",
        f"/?TOKEN={raw}&language=en-US",
        f"/accounts/login/?next=%2F%3Ftoken%3D{raw}",
        f"/accounts/login/?next=%252F%253Ftoken%253D{raw}",
        f"/accounts/login/?next={quote(f'/?a=1&Token={raw}', safe='')}",
        f"/history/?token%3D{raw}",
    ]
    for start in starts:
        path, hops = start, []
        while True:
            status, location, body = _get(server, path)
            assert raw not in location, start
            assert raw not in body, start
            if status != 302:
                break
            hops.append(location)
            path = location
        assert status == 200, start
        assert path.startswith("/accounts/login/?next=/"), (start, hops)
    async with connect(f"{server.ws_url}/?token={raw}&sendPartials=false") as ws:
        await ws.send("END_OF_STREAM")
        await drain(ws)

    output = server.output()
    assert raw not in output
    assert output.count("[redacted]") >= len(starts)
    assert '"GET /accounts/login/?next=/"' in output  # the access log is on
