"""Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) on `tokenizers`, pre-tokenized like llama.cpp.

llama.cpp splits text with a list of regexes chosen by `tokenizer.ggml.pre`; each regex splits every piece
the previous one produced, keeping matched and unmatched spans as separate pieces. A sequence of
`Split(..., behavior="isolated")` pre-tokenizers does exactly that, after which
`ByteLevel(use_regex=False)` maps bytes to the GPT-2 byte alphabet the vocabulary and merges are written in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from rocmforge.errors import GGUFError

logger = logging.getLogger(__name__)

# The regexes below are the ones llama.cpp's llm_tokenizer_bpe uses per pre-tokenizer type (they in turn come
# from each model's tokenizer.json). Contractions are spelled `'[sS]` instead of `(?i:'s)` as llama.cpp does.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK3_WORDS = (
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"""| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
    "\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + "(?:" + _CONTRACTIONS + ")?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + "(?:" + _CONTRACTIONS + ")?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"

# Pre-tokenizer type -> (regexes applied in order, ignore_merges). With ignore_merges a word that is itself
# in the vocabulary becomes that token without running the merges (llama.cpp sets it for these types).
_PRE_TYPES: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"), False),
    "llama3": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False),
    "chatglm4": ((_LLAMA3,), False),
    "glm4": ((_LLAMA3,), True),
    "deepseek-llm": (
        (
            "[\r\n]",
            _DEEPSEEK_LLM_LETTERS,
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            r"\s+$",
            _CJK,
            r"\p{N}+",
        ),
        False,
    ),
    "deepseek-coder": (("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"), False),
    "deepseek-v3": ((r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+", _DEEPSEEK3_WORDS), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "gpt2": ((_GPT2,), False),
    "qwen2": ((_QWEN2,), False),
    "qwen35": ((_QWEN35,), False),
    "bloom": ((_BLOOM,), False),
    "viking": ((_BLOOM, r"\p{N}"), False),
    "tekken": ((_TEKKEN,), True),
    "gpt4o": ((_GPT4O,), False),
    "seed-coder": (
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
        False,
    ),
    "bailingmoe": (
        (
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
        ),
        False,
    ),
}

# `tokenizer.ggml.pre` value -> pre-tokenizer type, as llama.cpp's vocabulary loader maps them.
_PRE_NAMES: dict[str, str] = {
    name: kind
    for kind, names in (
        ("default", "default"),
        ("llama3", "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2"),
        ("dbrx", "dbrx smaug-bpe"),
        ("deepseek-llm", "deepseek-llm"),
        ("deepseek-coder", "deepseek-coder"),
        ("deepseek-v3", "deepseek-v3 hunyuan-dense joyai-llm"),
        ("falcon", "falcon"),
        ("starcoder", "starcoder refact command-r smollm codeshell exaone minerva-7b mellum2"),
        (
            "gpt2",
            "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert "
            "jina-v1-en jina-v2-code roberta-bpe exaone4 mpt olmo jais trillion granite-docling",
        ),
        ("qwen2", "qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 megrez hunyuan solar-open grok-2"),
        ("qwen35", "qwen35"),
        ("bloom", "poro-chat bloom gpt3-finnish"),
        ("chatglm4", "chatglm-bpe"),
        ("glm4", "glm4 glm5"),
        ("viking", "viking"),
        ("tekken", "tekken"),
        ("gpt4o", "gpt-4o llama4 kanana2 talkie minimax-m2"),
        ("seed-coder", "seed-coder"),
        ("bailingmoe", "bailingmoe bailingmoe2 llada-moe"),
    )
    for name in names.split()
}

SUPPORTED_PRE_TOKENIZERS: frozenset[str] = frozenset(_PRE_NAMES)


def pre_tokenizer_type(pre: str | None, source: str) -> str:
    """The pre-tokenizer type for a `tokenizer.ggml.pre` value; unknown or missing names get 'default'."""
    if pre is None or pre == "":
        logger.warning("%s: no tokenizer.ggml.pre; using the 'default' pre-tokenizer", source)
        return "default"
    kind = _PRE_NAMES.get(pre)
    if kind is None:
        logger.warning(
            "%s: unsupported pre-tokenizer %r; falling back to 'default' (tokenization may differ from the "
            "model's own)",
            source,
            pre,
        )
        return "default"
    return kind


def parse_merges(merges: Sequence[str], source: str) -> list[tuple[str, str]]:
    """Split GGUF merges ("a b") into pairs at the first space after the first character, like llama.cpp."""
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, merge in enumerate(merges):
        if not isinstance(merge, str):
            raise GGUFError(f"{source}: tokenizer.ggml.merges[{i}] is {type(merge).__name__}, not a string")
        # Searching from index 1 lets a merge start with a literal space token (" x").
        pos = merge.find(" ", 1)
        if pos < 0:
            raise GGUFError(f"{source}: bad merge tokenizer.ggml.merges[{i}] = {merge!r}: no space separator")
        pair = (merge[:pos], merge[pos + 1 :])
        # llama.cpp keeps the first rank of a duplicated merge; the BPE model would keep the last.
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def build_bpe_backend(vocab: dict[str, int], merges: Sequence[str], pre_type: str, source: str) -> Tokenizer:
    """A `tokenizers.Tokenizer` that turns plain text (no special tokens) into ids like llama.cpp's BPE."""
    regexes, ignore_merges = _PRE_TYPES[pre_type]
    pairs = parse_merges(merges, source)
    usable = [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    if len(usable) != len(pairs):
        # llama.cpp would still apply such merges, but their result could never become a token by itself.
        logger.warning(
            "%s: ignoring %d merges whose parts or result are not in the vocabulary",
            source,
            len(pairs) - len(usable),
        )
    try:
        model = models.BPE(vocab=vocab, merges=usable, ignore_merges=ignore_merges, fuse_unk=False)
    except Exception as exc:
        raise GGUFError(f"{source}: cannot build the BPE tokenizer from its vocabulary and merges: {exc}") from None
    backend = Tokenizer(model)
    splits: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in regexes
    ]
    splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    return backend
