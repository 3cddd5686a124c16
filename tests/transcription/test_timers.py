"""SessionClock: what a session's timers ask at a given time (a pure step)."""

import pytest

from transcription.streaming import protocol, timers
from transcription.streaming.timers import SessionClock


@pytest.fixture(autouse=True)
def limits(settings):
    settings.TRANSCRIPTION_IDLE_TIMEOUT = 10.0
    settings.MAX_SESSION_SECONDS = 100.0


def streaming(clock: SessionClock, now: float, *, paused: bool = False):
    return clock.due(now, flushing=False, reading_paused=paused)


def test_streaming_looks_again_at_the_nearest_limit():
    clock = SessionClock(started=0.0, last_audio=95.0)
    assert streaming(clock, 96.0) == 100.0  # the longest session comes first
    clock = SessionClock(started=0.0, last_audio=50.0)
    assert streaming(clock, 51.0) == 60.0  # then the idle timeout


def test_idle_and_longest_end_the_audio_with_their_reason():
    assert streaming(SessionClock(last_audio=0.0), 10.0) == "No audio for 10 seconds."
    clock = SessionClock(started=0.0, last_audio=99.0)
    assert streaming(clock, 100.0) == (
        "Session reached the longest allowed, 100 seconds."
    )


def test_a_paused_reader_is_not_idle():
    clock = SessionClock(last_audio=0.0)
    assert streaming(clock, 30.0, paused=True) == 40.0
    assert clock.last_audio == 30.0


def test_flushing_is_bounded_by_progress_and_by_the_drain(monkeypatch):
    monkeypatch.setattr(timers, "FLUSH_TIMEOUT_SECONDS", 5.0)
    clock = SessionClock(progress_at=10.0)
    assert clock.due(12.0, flushing=True, reading_paused=False) == 15.0
    assert clock.due(15.5, flushing=True, reading_paused=False) is (
        protocol.ENGINE_TOO_SLOW
    )
    clock.drain_deadline = 13.0
    assert clock.due(12.0, flushing=True, reading_paused=False) == 13.0
    assert clock.due(13.0, flushing=True, reading_paused=False) is protocol.GOING_AWAY
