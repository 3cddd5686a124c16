"""A reply cut into sentences as its text arrives (replyStream, docs/protocol.md §11).

A sentence ends at `.`, `!`, `?` or `…` (closing quotes and brackets kept with it)
followed by a space or by the end of a line the receiver wrote: each line carries
whole words, and lines are joined with a space.
"""

from __future__ import annotations

import re

_END = re.compile(r"[.!?…]+[\"'\u201d\u2019)\]]*\s+")


class SentenceSplitter:
    """Feed it the reply's lines; it hands back each sentence once complete."""

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, fragment: str) -> list[str]:
        """The sentences `fragment` completes (its end counts as a space)."""
        self.buffer += " ".join(fragment.split()) + " "
        sentences = []
        start = 0
        for match in _END.finditer(self.buffer):
            if sentence := self.buffer[start : match.end()].strip():
                sentences.append(sentence)
            start = match.end()
        self.buffer = self.buffer[start:]
        return sentences

    def finish(self) -> str:
        """What is left once the reply ended: the last sentence, unterminated."""
        rest, self.buffer = self.buffer.strip(), ""
        return rest


def split_sentences(text: str) -> list[str]:
    """A whole reply's sentences."""
    splitter = SentenceSplitter()
    sentences = splitter.feed(text)
    if rest := splitter.finish():
        sentences.append(rest)
    return sentences
