"""Fixtures shared by the transcription tests."""

import pytest
from moto.server import ThreadedMotoServer


@pytest.fixture
def moto_polly(settings, monkeypatch):
    """A moto server on a loopback port, named by AWS_POLLY_ENDPOINT."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings.AWS_POLLY_ENDPOINT = f"http://{host}:{port}"
    settings.POLLY_VOICE = "Joanna"
    yield
    server.stop()
