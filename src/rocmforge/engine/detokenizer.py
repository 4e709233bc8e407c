"""Incremental detokenizer with stop strings: one request's new token ids -> text deltas for its stream.

Tokens carry bytes, not characters (a byte-level BPE token may hold half of an emoji), so the token bytes go
through an incremental UTF-8 decoder: a character split across tokens is held until its last byte arrives
instead of surfacing as U+FFFD. Stop strings are matched on the decoded text, so one found across several
tokens or inside a single token is cut at the exact character. Text that might be the start of a stop string
is held back until the next tokens show it is not, so no part of a stop string ever reaches the caller.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

from rocmforge.gguf.tokenizer import Tokenizer

__all__ = ["DetokenizerDelta", "IncrementalDetokenizer"]


@dataclass(frozen=True, slots=True)
class DetokenizerDelta:
    """What one `update` adds to the caller's stream.

    text: new text to append (possibly empty while characters are held back).
    stop_str: the stop string that matched in this update, or None. Once set the request is finished: later
    updates return empty deltas.
    """

    text: str
    stop_str: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_str is not None


class IncrementalDetokenizer:
    """Turns one request's generated token ids into text deltas, cutting at the first stop string.

    Invariants: every delta is valid text with no U+FFFD from a character split between tokens; the
    concatenation of all deltas and `finish()` equals `output_text`, which is
    `tokenizer.decode(output_ids, skip_special_tokens)` cut before the first stop string (after it with
    `include_stop_str_in_output`). When several stop strings occur, the one that ends first wins (ties go to
    the longer one), so the result does not depend on how the ids were chunked into updates.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        # Token bytes do not depend on the tokens before them (no SentencePiece-style context), so the prompt
        # is kept only for callers that want it; the output text starts fresh after it.
        self.prompt_token_ids: tuple[int, ...] = tuple(prompt_token_ids)
        # An empty stop string would match before any output; treat it as "no stop string" rather than
        # finishing every request immediately.
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._include_stop = include_stop_str_in_output
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # decoded text so far, cut at the stop string once one matched
        self._emitted = 0  # characters of _text already handed out in deltas
        self._output_ids: list[int] = []
        self._stop_str: str | None = None
        self._finished = False

    # -- public state ----------------------------------------------------------------------------------------
    @property
    def output_text(self) -> str:
        """The request's text so far (the final text once stopped or finished), held-back characters included."""
        return self._text

    @property
    def output_token_ids(self) -> list[int]:
        """Every id passed to `update`, including those after a stop string matched."""
        return list(self._output_ids)

    @property
    def stop_str(self) -> str | None:
        """The stop string that ended the request, or None."""
        return self._stop_str

    @property
    def stopped(self) -> bool:
        return self._stop_str is not None

    # -- streaming -------------------------------------------------------------------------------------------
    def update(self, new_token_ids: Sequence[int]) -> DetokenizerDelta:
        """Feed the newly generated ids; returns the text that is now safe to show and whether a stop matched."""
        if self._finished:
            raise RuntimeError("update() after finish()")
        vocab_size = self._tokenizer.vocab_size
        for token_id in new_token_ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {vocab_size})")
        if self._stop_str is not None:
            self._output_ids.extend(new_token_ids)
            return DetokenizerDelta("")
        chunks = []
        for token_id in new_token_ids:
            piece = self._tokenizer.token_bytes(token_id, special=not self._skip_special)
            if not self._output_ids:
                piece = self._strip_leading_space(token_id, piece)
            self._output_ids.append(token_id)
            chunks.append(piece)
        return self._advance(self._utf8.decode(b"".join(chunks)), final=False)

    def finish(self) -> str:
        """End of generation: flush the held-back text (an incomplete UTF-8 tail becomes U+FFFD, as decode does).

        The flushed text can still complete a stop string; `stop_str` says so afterwards.
        """
        if self._finished:
            return ""
        self._finished = True
        if self._stop_str is not None:
            return ""
        return self._advance(self._utf8.decode(b"", final=True), final=True).text

    # -- internals -------------------------------------------------------------------------------------------
    def _strip_leading_space(self, token_id: int, piece: bytes) -> bytes:
        # Tokenizer.decode drops the space SentencePiece put in front of the first token (add_space_prefix).
        # Ask decode itself whether it does so for this token, rather than re-deriving its rules.
        if piece.startswith(b" "):
            alone = self._tokenizer.decode([token_id], skip_special_tokens=self._skip_special)
            if not alone.startswith(" "):
                return piece[1:]
        return piece

    def _advance(self, new_text: str, final: bool) -> DetokenizerDelta:
        searched = len(self._text)  # no stop string ends within the text we already had
        self._text += new_text
        match = self._find_stop(searched)
        if match is not None:
            start, stop = match
            self._stop_str = stop
            self._text = self._text[: start + len(stop)] if self._include_stop else self._text[:start]
            return DetokenizerDelta(self._release(len(self._text)), stop)
        end = len(self._text) if final else len(self._text) - self._held_back()
        return DetokenizerDelta(self._release(end))

    def _find_stop(self, searched: int) -> tuple[int, str] | None:
        """(start, stop string) of the stop that ends first in the new text; the longer one on a tie."""
        best: tuple[int, int, str] | None = None  # (end, -length, stop)
        for stop in self._stops:
            start = self._text.find(stop, max(0, searched - len(stop) + 1))
            if start >= 0:
                key = (start + len(stop), -len(stop), stop)
                if best is None or key < best:
                    best = key
        if best is None:
            return None
        end, _, stop = best
        return end - len(stop), stop

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string (so may become one)."""
        text = self._text
        for k in range(min(self._max_hold, len(text) - self._emitted), 0, -1):
            tail = text[-k:]
            if any(stop.startswith(tail) for stop in self._stops):
                return k
        return 0

    def _release(self, end: int) -> str:
        delta = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta
