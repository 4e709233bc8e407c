"""SentencePiece-style vocabularies (`tokenizer.ggml.model == "llama"`) on the `tokenizers` library.

llama.cpp's SPM tokenizer starts from single characters and repeatedly merges the adjacent pair whose
concatenation is the vocabulary token with the highest score; symbols that never became a token fall back to
`<0xNN>` byte tokens. That is a BPE whose merge ranks are the merged tokens' scores, so the backend here
is a `tokenizers.models.BPE` with `byte_fallback=True` and merges derived from the scores (the construction
Hugging Face's Llama/Gemma converters use). Unigram would run Viterbi over the scores instead, which is not
what llama.cpp does.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models

from rocmforge.errors import GGUFError

SPACE_ESCAPE = "\u2581"  # "▁": SentencePiece writes spaces as this character inside tokens.


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of every token into two vocabulary tokens, best merged-token score first.

    llama.cpp merges any adjacent pair whose concatenation is in the vocabulary, so every such split is a
    merge. Ties in score go to the lower merged-token id, then to the shorter left part (a stable order).
    """
    ranked: list[tuple[float, int, int, str, str]] = []
    append = ranked.append
    for token_id, token in enumerate(tokens):
        n = len(token)
        if n < 2:
            continue
        neg_score = -scores[token_id]
        for i in range(1, n):
            left = token[:i]
            if left in vocab:
                right = token[i:]
                if right in vocab:
                    append((neg_score, token_id, i, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def build_spm_backend(tokens: Sequence[str], scores: Sequence[float], vocab: dict[str, int], source: str) -> Tokenizer:
    """A `tokenizers.Tokenizer` turning space-escaped text (no special tokens) into ids like llama.cpp."""
    merges = merges_from_scores(tokens, scores, vocab)
    try:
        model = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False)
    except Exception as exc:
        raise GGUFError(f"{source}: cannot build the SentencePiece tokenizer from its vocabulary: {exc}") from None
    # No normalizer and no pre-tokenizer: llama.cpp runs the merges over the whole text fragment at once.
    return Tokenizer(model)
