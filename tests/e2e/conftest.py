"""Fixtures for end-to-end tests against real servers."""

import pytest

from tests.e2e.servers import run_daphne


@pytest.fixture
def echo_server(transactional_db):
    """daphne with the echo engine (no recognition: fast protocol checks)."""
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as server:
        yield server
