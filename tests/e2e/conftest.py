"""Fixtures for end-to-end tests against real servers."""

import contextlib

import pytest

from tests.e2e.servers import LiveServer, run_daphne


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the last lines of each daphne server it used: what the
    server saw is often the only clue to a failure that does not repeat."""
    report = yield
    if report.failed:
        servers = [v for v in item.funcargs.values() if isinstance(v, LiveServer)]
        for server in servers:
            with contextlib.suppress(OSError):
                tail = server.output().splitlines()[-200:]
                report.sections.append(
                    (f"daphne on port {server.port}", "\n".join(tail))
                )
    return report


@pytest.fixture
def echo_server(transactional_db):
    """daphne with the echo engine (no recognition: fast protocol checks)."""
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as server:
        yield server
