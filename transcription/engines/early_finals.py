"""Finalize for an engine that decides its own results' ends (AWS Transcribe).

Transcribe Streaming has no call that ends a result now. So a Finalize makes the
partial in flight final at once (what the service had heard then), and the rest of
that result, as the service goes on with it, is told as a result of its own: its
words past as many as were made final (the service may still revise those; what
the client was sent stands).
"""

from __future__ import annotations

import dataclasses

from transcription.engines.types import TranscriptEvent


class EarlyFinals:
    """The partial in flight, and the results made final early (by result id)."""

    def __init__(self) -> None:
        # (the service's result id, the partial as told), until its final.
        self.in_flight: tuple[str, TranscriptEvent] | None = None
        self._words_sent: dict[str, int] = {}  # result id -> words made final

    def finalize(self) -> TranscriptEvent | None:
        """The partial in flight as a final, now (None: nothing in flight)."""
        if self.in_flight is None:
            return None
        (key, event), self.in_flight = self.in_flight, None
        self._words_sent[key] = self._words_sent.get(key, 0) + len(event.text.split())
        return dataclasses.replace(event, is_partial=False)

    def told(self, event: TranscriptEvent) -> TranscriptEvent | None:
        """What to tell of the service's `event`: itself, its words not yet made
        final, or None (nothing new)."""
        key = event.result_id
        sent = self._words_sent.get(key, 0)
        if not event.is_partial:
            self._words_sent.pop(key, None)
        self.in_flight = None
        if sent:
            rest = event.text.split()[sent:]
            if not rest:
                return None
            event = dataclasses.replace(
                event,
                text=" ".join(rest),
                result_id=f"{key}+{sent}",
                words=event.words[sent:],  # AWS's words are the text's, in order
            )
        if event.is_partial:
            self.in_flight = (key, event)
        return event
