"""Shared fixtures: users, API tokens, a WebSocket client for the ASGI app."""

import os
from urllib.parse import urlencode

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from hypothesis import settings as hypothesis_settings

from accounts.services import api_token_create

# Property tests draw the same examples on every run (`make test` and CI agree);
# HYPOTHESIS_PROFILE=explore draws new ones, to hunt for more.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", max_examples=1000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True)
def _fresh_failure_counts():
    """Each test starts with no failed authentications counted in this process (the
    counter is in memory: refusals of one test would throttle the next)."""
    from accounts.throttle import auth_failures

    auth_failures.clear()
    yield
    auth_failures.clear()


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="alice", password="pw-alice-1")


@pytest.fixture
def api_token(user):
    """(ApiToken, raw token) for alice."""
    return api_token_create(user=user, name="tests")


@pytest.fixture
def echo_engine(settings):
    settings.TRANSCRIPTION_ENGINE = "echo"


@pytest.fixture
async def connect():
    """Open a WebsocketCommunicator on the real ASGI application."""
    from voiceproject.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def _connect(path: str = "/", headers=None, **params):
        query = urlencode(params)
        url = f"{path}?{query}" if query else path
        communicator = WebsocketCommunicator(application, url, headers=headers or [])
        connected, _ = await communicator.connect()
        assert connected
        opened.append(communicator)
        return communicator

    yield _connect
    for communicator in opened:
        await communicator.disconnect()


@pytest.fixture(scope="session", autouse=True)
def _offline_decoder_pools():
    """Stop the offline engine's decoding processes when the test session ends."""
    yield
    from transcription.engines.pool import shutdown_pools

    shutdown_pools()


@pytest.fixture(scope="session", autouse=True)
def _close_async_test_connections(django_db_setup):
    """Close the connection that async tests' sync_to_async calls opened in asgiref's
    worker thread, so that the test database can be dropped (PostgreSQL refuses to
    drop a database that has sessions)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
