"""A session's timers: idle, the longest session, the final flush, a shutdown's end."""

from __future__ import annotations

import dataclasses

from django.conf import settings

from transcription.streaming import protocol
from transcription.streaming.protocol import Close

# After END_OF_STREAM the engine must make progress: a file streamed faster than real
# time may take minutes to decode, so the bound restarts with every event.
FLUSH_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass(slots=True)
class SessionClock:
    """When a session started, last had audio, last made progress (loop time)."""

    started: float = 0.0
    last_audio: float = 0.0
    progress_at: float = 0.0  # the engine's last event while flushing
    drain_deadline: float | None = None  # set when the server shuts down

    def due(
        self, now: float, *, flushing: bool, reading_paused: bool
    ) -> Close | str | float:
        """What the timers ask at `now`: a Close to end the session with, a reason
        to end its audio for, or the time to look again."""
        if self.drain_deadline is not None and now >= self.drain_deadline:
            return protocol.GOING_AWAY  # the engine did not finish in time
        if flushing:
            if now - self.progress_at > FLUSH_TIMEOUT_SECONDS:
                return protocol.ENGINE_TOO_SLOW
            deadline = self.progress_at + FLUSH_TIMEOUT_SECONDS
            if self.drain_deadline is not None:
                deadline = min(deadline, self.drain_deadline)
            return deadline
        idle = settings.TRANSCRIPTION_IDLE_TIMEOUT
        longest = settings.MAX_SESSION_SECONDS
        if reading_paused:  # waiting for the engine: not the client's idling
            self.last_audio = now
        if now - self.last_audio >= idle:
            return f"No audio for {idle:g} seconds."
        if now - self.started >= longest:
            return f"Session reached the longest allowed, {longest:g} seconds."
        return min(self.last_audio + idle, self.started + longest)
