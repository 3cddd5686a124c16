"""The audio a session's record counts: its bytes at their rate, or (compressed audio,
no fixed rate) the seconds its decoder handed the engine."""

import pytest

from transcription import services
from transcription.engines import StreamParams, TranscriptEvent
from transcription.models import AudioSession
from transcription.streaming.records import SessionRecord

pytestmark = pytest.mark.django_db


class Decoder:
    """A CountsAudio stream: what it decoded so far."""

    on_decoded = None

    def __init__(self) -> None:
        self.audio_seconds = 0.0


def test_a_compressed_session_counts_what_was_decoded():
    record = SessionRecord(engine="offline")
    record.streaming(StreamParams(encoding="webm"))
    decoder = Decoder()
    record.decoder = decoder  # as the session sets it once the stream is open
    record.audio_bytes, decoder.audio_seconds = 5000, 2.5
    assert (record.audio_seconds, record.decoded_seconds) == (2.5, 2.5)


def test_pcm_is_counted_by_its_bytes():
    record = SessionRecord(engine="offline")
    record.streaming(StreamParams(encoding="pcm", sample_rate=16000))
    record.audio_bytes = 48000
    assert (record.audio_seconds, record.decoded_seconds) == (1.5, None)


def test_decoded_seconds_grow_after_the_last_bytes_and_never_go_back():
    session = services.session_start(
        user=None,
        token=None,
        auth_method="",
        engine="offline",
        params=StreamParams(encoding="webm"),
    )
    compressed = {"bytes_per_second": None, "session_id": session.pk}
    services.session_heartbeat(audio_bytes=9000, audio_seconds=4.0, **compressed)
    # A final held while the database was away, stored after that heartbeat.
    services.transcript_add_final(
        seq=1,
        event=TranscriptEvent(text="hello", is_partial=False),
        audio_bytes=4000,
        audio_seconds=1.5,
        **compressed,
    )
    session.refresh_from_db()
    assert (session.audio_bytes, session.audio_seconds) == (9000, 4.0)
    # Every byte had come; the decoder handed the engine the rest of it since.
    services.session_end(
        close_code=1000, audio_bytes=9000, audio_seconds=7.11, **compressed
    )
    session.refresh_from_db()
    assert (session.audio_bytes, session.audio_seconds) == (9000, 7.11)
    assert AudioSession.objects.get().status == "completed"
