"""WebSocket authentication: cookie sessions checked against Origin, client addresses,
and the throttle on failed authentications (WebsocketCommunicator on the app)."""

import asyncio
import logging

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from prometheus_client import REGISTRY

from accounts.middleware import (
    AUTH_REFUSALS,
    ApiTokenAuthMiddlewareStack,
    address_of,
    client_address,
    parse_origin,
)
from tests.helpers import receive_until_close

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("echo_engine"),
]


@pytest.fixture
def session_cookie(user):
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _app_from(client: tuple[str, int] | None):
    """The real ASGI application, as if daphne's peer were `client`."""
    from voiceproject.asgi import application

    async def app(scope, receive, send):
        return await application({**scope, "client": client}, receive, send)

    return app


async def _open(
    cookie: str | None = None,
    origin: str | None = None,
    host: str = "127.0.0.1:8765",
    query: str = "sendPartials=false",
    peer: tuple[str, int] | None = ("127.0.0.1", 50000),
    extra: list[tuple[bytes, bytes]] | None = None,
):
    headers = [(b"host", host.encode()), *(extra or [])]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    ws = WebsocketCommunicator(_app_from(peer), f"/?{query}", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def _error(ws) -> str:
    messages, close = await receive_until_close(ws)
    assert close["code"] == 1008
    assert len(messages) == 1
    return messages[0]["error"]


async def _refused_for_origin(ws) -> bool:
    return (await _error(ws)).startswith("Origin not allowed")


async def _streams(ws) -> bool:
    await ws.send_to(bytes_data=b"\0" * 64)
    await ws.send_to(text_data="END_OF_STREAM")
    messages, close = await receive_until_close(ws)
    return messages == [{"transcript": "received 64 bytes"}] and close["code"] == 1000


# --- Origin rule for cookie sessions -----------------------------------------


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("localhost:8765", "http://LOCALHOST:8765"),
        ("localhost", "http://localhost:80"),  # default port made explicit
        ("localhost:80", "http://localhost"),
    ],
)
async def test_same_origin_cookie_session_needs_no_token(session_cookie, host, origin):
    ws = await _open(session_cookie, origin, host=host)
    assert await _streams(ws)


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:3999",  # another port of the same host
        "https://127.0.0.1:8765",  # https page, http server
        "http://localhost:8765",  # another host name for the same server
        "https://evil.example",
        "null",
        "",
        "http://127.0.0.1:8765/",  # not an origin: has a path
        "http://user@127.0.0.1:8765",
        "ws://127.0.0.1:8765",
        None,
    ],
)
async def test_cookie_session_from_any_other_origin_is_refused(session_cookie, origin):
    ws = await _open(session_cookie, origin)
    assert await _refused_for_origin(ws)


async def test_host_outside_allowed_hosts_is_no_origin_of_ours(session_cookie):
    ws = await _open(
        session_cookie, "http://evil.example:8765", host="evil.example:8765"
    )
    assert await _refused_for_origin(ws)


async def test_behind_a_tls_proxy_the_own_origin_is_https(session_cookie, settings):
    settings.DJANGO_BEHIND_TLS_PROXY = True
    settings.ALLOWED_HOSTS = ["voice.example"]
    ws = await _open(session_cookie, "http://voice.example", host="voice.example")
    assert await _refused_for_origin(ws)
    ws = await _open(session_cookie, "https://voice.example:443", host="voice.example")
    assert await _streams(ws)


async def test_listed_trusted_origin_is_accepted_wildcards_are_not(
    session_cookie, settings
):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example", "https://*.example.org"]
    ws = await _open(session_cookie, "https://app.example:443")
    assert await _streams(ws)
    for origin in (
        "https://a.example.org",
        "http://app.example",
        "https://*.example.org",
    ):
        ws = await _open(session_cookie, origin)
        assert await _refused_for_origin(ws)


async def test_token_clients_need_no_origin(api_token):
    _, raw = api_token
    ws = await _open(
        origin="https://evil.example", query=f"token={raw}&sendPartials=false"
    )
    assert await _streams(ws)


def test_parse_origin_makes_default_ports_explicit():
    assert parse_origin("http://Example.com") == ("http", "example.com", 80)
    assert parse_origin("https://example.com:443") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]:8000") == ("http", "::1", 8000)
    assert parse_origin("http://example.com:99999") is None
    assert parse_origin("null") is None


# --- Client addresses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        # A peer on the network: its X-Forwarded-For is whatever it wrote.
        ("203.0.113.7", "10.9.9.9", "203.0.113.7"),
        # A local proxy: the last hop is the address it saw.
        ("127.0.0.1", "10.9.9.9, 198.51.100.2", "198.51.100.2"),
        ("::1", "2001:db8::5", "2001:db8::5"),
        (None, "198.51.100.2", "198.51.100.2"),  # unix socket
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
        ("127.0.0.1", None, "127.0.0.1"),
        ("::ffff:198.51.100.2", None, "198.51.100.2"),
        (None, None, "unknown"),
    ],
)
def test_address_of(peer, forwarded_for, expected):
    assert address_of(peer, forwarded_for) == expected


def test_client_address_reads_the_scope():
    scope = {
        "client": ["127.0.0.1", 4000],
        "headers": [(b"x-forwarded-for", b"198.51.100.2")],
    }
    assert client_address(scope) == "198.51.100.2"
    assert client_address({"client": None, "headers": []}) == "unknown"


async def test_scope_carries_client_address_and_auth_method():
    seen = {}

    async def inner(scope, receive, send):
        seen.update(scope)

    app = ApiTokenAuthMiddlewareStack(inner)
    await app(
        {"type": "websocket", "client": ["203.0.113.7", 1], "headers": []}, None, None
    )
    assert seen["client_address"] == "203.0.113.7"
    assert seen["auth_method"] is None
    assert seen["api_token"] is None


# --- Throttle on failed authentications ---------------------------------------
# At the middleware's boundary: what it tells the consumer in the scope (the consumer
# turns auth_method into AUTH_REFUSALS[auth_method] and close 1008), and the token
# lookups it makes, read from their Prometheus counter.


class Recorder:
    """An inner application that keeps each scope it is called with."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)


def lookups() -> dict[str, float]:
    """Token lookups so far, by kind (transcription.metrics.TOKEN_LOOKUPS)."""
    return {
        kind: REGISTRY.get_sample_value(
            "voiceproject_token_lookups_total", {"kind": kind}
        )
        or 0.0
        for kind in ("authenticate", "probe")
    }


def since(before: dict[str, float]) -> dict[str, float]:
    now = lookups()
    return {kind: now[kind] - before[kind] for kind in now}


async def _attempt(app, peer, *, query: str = "", headers=()) -> dict:
    scope = {
        "type": "websocket",
        "path": "/",
        "client": [peer, 1],
        "query_string": query.encode(),
        "headers": list(headers),
    }
    await app(scope, None, None)
    return app.inner.scopes[-1]


BAD = "token=vp_guessedguessedguessedxx"


async def test_over_the_limit_failures_are_throttled_and_valid_tokens_still_accepted(
    settings, api_token, caplog
):
    settings.AUTH_FAILURES_PER_MINUTE = 3
    _, raw = api_token
    app = ApiTokenAuthMiddlewareStack(Recorder())
    before = lookups()
    for _ in range(3):
        scope = await _attempt(app, "203.0.113.7", query=BAD)
        assert scope["auth_method"] == "bad_token"
    assert since(before) == {"authenticate": 3, "probe": 0}

    before = lookups()
    with caplog.at_level(logging.INFO):
        for query, headers in [
            (BAD, ()),  # one probe
            ("token=nope", ()),  # cannot be a token: not even probed
            ("", ()),  # no credentials
        ]:
            scope = await _attempt(app, "203.0.113.7", query=query, headers=headers)
            assert scope["auth_method"] == "throttled"
            assert scope["api_token"] is None
            assert not scope["user"].is_authenticated
            assert scope["client_address"] == "203.0.113.7"
        assert since(before) == {"authenticate": 0, "probe": 1}

        # The valid token, from the same address: probed, then authenticated.
        before = lookups()
        for query, headers in [
            (f"token={raw}", ()),
            ("", [(b"authorization", f"Bearer {raw}".encode())]),
        ]:
            scope = await _attempt(app, "203.0.113.7", query=query, headers=headers)
            assert scope["auth_method"] == "token"
            assert scope["user"].username == "alice"
        assert since(before) == {"authenticate": 2, "probe": 2}
    warnings = [r for r in caplog.records if r.name == "accounts.throttle"]
    assert len(warnings) == 2  # the 1st and 2nd refusal of the window, then the 4th…
    assert "203.0.113.7" in warnings[0].getMessage()
    assert raw not in caplog.text
    assert "vp_guessedguessedguessedxx" not in caplog.text

    # Another address is not throttled.
    scope = await _attempt(app, "198.51.100.2", query=BAD)
    assert scope["auth_method"] == "bad_token"


async def test_missing_credentials_count_towards_the_limit(settings):
    settings.AUTH_FAILURES_PER_MINUTE = 2
    app = ApiTokenAuthMiddlewareStack(Recorder())
    methods = [(await _attempt(app, "203.0.113.7"))["auth_method"] for _ in range(3)]
    assert methods == [None, None, "throttled"]


async def test_concurrent_bad_attempts_get_no_more_lookups_than_the_limit(
    settings, api_token
):
    settings.AUTH_FAILURES_PER_MINUTE = 5
    _, raw = api_token
    app = ApiTokenAuthMiddlewareStack(Recorder())
    before = lookups()
    await asyncio.gather(
        *(
            _attempt(app, "203.0.113.7", query=f"token=vp_guess{n:016d}")
            for n in range(60)
        ),
        _attempt(app, "203.0.113.7", query=f"token={raw}"),
    )
    methods = [scope["auth_method"] for scope in app.inner.scopes]
    assert methods.count("token") == 1
    assert methods.count("bad_token") == 5
    assert methods.count("throttled") == 55
    counted = since(before)
    # Five bad tokens within the limit, and the valid one (within or over it).
    assert counted["authenticate"] == 6
    assert counted["probe"] <= 56  # at most one per attempt over the limit


async def test_a_local_proxy_client_is_counted_by_its_forwarded_address(settings):
    settings.AUTH_FAILURES_PER_MINUTE = 1
    app = ApiTokenAuthMiddlewareStack(Recorder())
    first = [(b"x-forwarded-for", b"203.0.113.7")]
    second = [(b"x-forwarded-for", b"198.51.100.2")]
    assert (await _attempt(app, "127.0.0.1", query=BAD, headers=first))[
        "auth_method"
    ] == "bad_token"
    assert (await _attempt(app, "127.0.0.1", query=BAD, headers=first))[
        "auth_method"
    ] == "throttled"
    assert (await _attempt(app, "127.0.0.1", query=BAD, headers=second))[
        "auth_method"
    ] == "bad_token"


async def test_throttled_address_keeps_its_cookie_sessions(settings, session_cookie):
    settings.AUTH_FAILURES_PER_MINUTE = 1
    settings.AUTH_FAILURE_DELAY_SECONDS = 0.01
    peer = ("203.0.113.7", 1)
    ws = await _open(query="token=vp_guessedguessedguessed", peer=peer)
    assert "Invalid token" in await _error(ws)
    ws = await _open(session_cookie, "http://127.0.0.1:8765", peer=peer)
    assert await _streams(ws)
    # Over the limit, a session from another origin is a failure like any other.
    ws = await _open(session_cookie, "http://evil.example", peer=peer)
    assert (await _error(ws)) == AUTH_REFUSALS["throttled"]


def test_every_refusal_has_a_message_and_throttled_reveals_nothing():
    assert set(AUTH_REFUSALS) == {None, "bad_token", "bad_origin", "throttled"}
    message = AUTH_REFUSALS["throttled"].lower()
    assert "invalid" not in message
    assert "unknown" not in message
    assert "minute" in message
