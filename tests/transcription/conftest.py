"""Fixtures shared by the transcription tests."""

import asyncio

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


class LoopClock:
    """Moves the running loop's clock on (asyncio's timers and the consumer's bounds
    run on loop.time()): timers come due as if that time had passed, at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
async def loop_clock(monkeypatch) -> LoopClock:
    loop = asyncio.get_running_loop()
    clock, real = LoopClock(), loop.time
    monkeypatch.setattr(loop, "time", lambda: real() + clock.offset)
    return clock
