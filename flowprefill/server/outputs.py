"""Turning engine token ids into client text: incremental detokenization and stop strings.

Token-level stops (max_tokens, EOS) belong to the engine. Text-level stops (`stop` strings)
are found here, on the decoded text; the caller then aborts the engine request, so the one
abort path frees its KV blocks.
"""

from __future__ import annotations

from typing import Protocol


class Detokenizer(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class TextStream:
    """Accumulates token ids and yields the newly printable text after each token.

    Text is held back while it ends in an incomplete UTF-8 sequence (decoded as U+FFFD) or
    while its tail could still become a stop string, so a stop string is never half-sent.
    """

    def __init__(self, tokenizer: Detokenizer, stop: list[str]) -> None:
        self._tok = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already handed out
        self.stopped = False

    @property
    def token_ids(self) -> list[int]:
        return self._ids

    def add(self, token_id: int) -> str:
        """Append one token; return text safe to send now ('' if none)."""
        self._ids.append(token_id)
        text = self._tok.decode(self._ids)
        for s in self._stop:
            at = text.find(s, max(0, self._sent - len(s)))
            if at != -1:
                self.stopped = True
                return self._take(text[:at])
        if text.endswith("\ufffd"):
            return ""
        hold = max((_overlap(text, s) for s in self._stop), default=0)
        return self._take(text[: len(text) - hold])

    def flush(self) -> str:
        """All text not yet sent (at the end of generation)."""
        if self.stopped:
            return ""
        return self._take(self._tok.decode(self._ids))

    def _take(self, text: str) -> str:
        out = text[self._sent :]
        self._sent = max(self._sent, len(text))
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
