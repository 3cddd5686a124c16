"""Authentication against a real daphne on loopback, with a real WebSocket client."""

import http.client
import ssl
import sys
from urllib.parse import quote

import pytest
import trustme
from django.conf import settings
from django.test import Client
from websockets.asyncio.client import connect

from tests.e2e.servers import (
    LiveServer,
    _wait_until_listening,
    drain,
    free_port,
    run_daphne,
    run_process,
)

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


@pytest.fixture
def tls_server(transactional_db, tmp_path):
    """daphne serving TLS itself (`-e ssl:…`), with a throw-away CA's certificate for
    127.0.0.1; `server.tls` trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    port = free_port()
    pem = tmp_path / "server.pem"
    endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={pem}:certKey={pem}"
    args = [
        sys.executable,
        "-m",
        "daphne",
        "-e",
        endpoint,
        "voiceproject.asgi:application",
    ]
    env = {"TRANSCRIPTION_ENGINE": "echo", "DJANGO_SECRET_KEY": settings.SECRET_KEY}
    with run_process(args, env, name="daphne") as (process, log):
        server = LiveServer(port=port, process=process, log_path=log)
        _wait_until_listening(server, 60)
        server.tls = ssl.create_default_context()
        ca.configure_trust(server.tls)
        yield server


async def test_over_daphnes_own_tls_a_cookie_session_from_its_https_page_is_accepted(
    tls_server, cookie
):
    """daphne's websocket scope has no scheme: without one the server's own origin
    was http://…, and every browser on https://… was refused."""
    url = f"wss://127.0.0.1:{tls_server.port}/?sendPartials=false"

    async def session(origin: str) -> tuple[list[dict], int]:
        headers = {"Cookie": cookie, "Origin": origin}
        async with connect(url, ssl=tls_server.tls, additional_headers=headers) as ws:
            if origin.startswith("https"):
                await ws.send(b"\0" * 64)
                await ws.send("END_OF_STREAM")
            messages = await drain(ws)
            return messages, ws.close_code

    own = f"https://127.0.0.1:{tls_server.port}"
    assert await session(own) == ([{"transcript": "received 64 bytes"}], 1000)
    messages, code = await session(own.replace("https://", "http://"))
    assert code == 1008
    assert messages[0]["error"].startswith("Origin not allowed")


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
