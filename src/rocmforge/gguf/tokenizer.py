"""The tokenizer described by a GGUF file's metadata, tokenizing exactly like llama.cpp's `llama_tokenize`.

The pieces llama.cpp implements around the core algorithm are reproduced here: token attributes (including the
ones it infers from token text), splitting special tokens out of the text before tokenizing (longest token
first), the SentencePiece dummy space prefix, BOS/EOS handling, the end-of-generation set, and
`token_to_piece`/`llama_detokenize` for decoding. The core algorithms (byte-level BPE with llama.cpp's
pre-tokenizer regexes, score-ordered SentencePiece merges) run on the `tokenizers` library; see
`tokenizer_bpe` and `tokenizer_spm`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.tokenizer_bpe import build_bpe_backend, pre_tokenizer_type
from rocmforge.gguf.tokenizer_spm import SPACE_ESCAPE, build_spm_backend

# Token attributes, as llama.cpp's llama_token_attr bit flags.
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF token types (tokenizer.ggml.token_type) -> attribute; anything else is UNDEFINED.
_TYPE_TO_ATTR = {
    1: ATTR_NORMAL,
    2: ATTR_UNKNOWN,
    3: ATTR_CONTROL,
    4: ATTR_USER_DEFINED,
    5: ATTR_UNUSED,
    6: ATTR_BYTE,
}
_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN

# llama.cpp's vocabulary types for other tokenizer.ggml.model values: real, but not implemented here.
_UNSUPPORTED_MODELS = frozenset(
    {"bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace", "none", "no_vocab"}
)

# Special-token ids read from metadata, in llama.cpp's order (the deprecated prefix/suffix/middle keys come
# last and so win over the fim_* keys).
_ID_KEYS: tuple[tuple[str, str], ...] = (
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"),
    ("eom", "tokenizer.ggml.eom_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
    ("fim_pre", "tokenizer.ggml.fim_pre_token_id"),
    ("fim_suf", "tokenizer.ggml.fim_suf_token_id"),
    ("fim_mid", "tokenizer.ggml.fim_mid_token_id"),
    ("fim_pad", "tokenizer.ggml.fim_pad_token_id"),
    ("fim_rep", "tokenizer.ggml.fim_rep_token_id"),
    ("fim_sep", "tokenizer.ggml.fim_sep_token_id"),
    ("fim_pre", "tokenizer.ggml.prefix_token_id"),
    ("fim_suf", "tokenizer.ggml.suffix_token_id"),
    ("fim_mid", "tokenizer.ggml.middle_token_id"),
)

# When a model names no such id, llama.cpp recognises these tokens by their text (and makes them CONTROL).


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_AUTODETECT: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "eot",
        _words(
            "<|eot_id|> <|im_end|> <|end|> <end_of_turn> <|endoftext|> <|end_of_text|> <EOT> _<EOT> [EOT] "
            "<｜end▁of▁sentence｜> <end_of_utterance>"
        ),
    ),
    ("eom", _words("<|eom_id|>")),
    (
        "fim_pre",
        _words("<|fim_prefix|> <fim-prefix> <fim_prefix> <｜fim▁begin｜> <PRE> ▁<PRE> <|code_prefix|> <|prefix|>"),
    ),
    (
        "fim_suf",
        _words("<|fim_suffix|> <fim-suffix> <fim_suffix> <｜fim▁hole｜> <SUF> ▁<SUF> <|code_suffix|> <|suffix|>"),
    ),
    (
        "fim_mid",
        _words("<|fim_middle|> <fim-middle> <fim_middle> <｜fim▁end｜> <MID> ▁<MID> <|code_middle|> <|middle|>"),
    ),
    ("fim_pad", _words("<|fim_pad|> <fim-pad> <fim_pad> <PAD> [PAD]")),
    ("fim_rep", _words("<|fim_repo|> <|repo_name|> <fim-repo> <REPO> <reponame>")),
    ("fim_sep", _words("<|file_sep|>")),
)

# Token texts that end generation (llama.cpp's list; the choice by text is its heuristic, not ours).
_EOG_TEXTS = _words(
    "<|eot_id|> <|im_end|> <|end|> <|return|> <|call|> <|flush|> <|calls|> <end_of_turn> <|endoftext|> "
    "</s> <|eom_id|> <EOT> _<EOT> [EOT] [EOS] <|end_of_text|> <end_of_utterance> <eos> <turn|> "
    "<|tool_response> <｜end▁of▁sentence｜> [e~["
)

_ASCII_SPACE = " \t\n\v\f\r"  # what C's isspace() strips around LSTRIP/RSTRIP tokens


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted: character -> byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class Tokenizer:
    """Text <-> token ids for one GGUF model, matching llama.cpp token for token.

    Build it with `Tokenizer.from_metadata(metadata)`, where `metadata` maps GGUF keys to values as
    `gguf.ReaderField.contents()` returns them.
    """

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos: bool
    add_eos: bool
    eog_token_ids: frozenset[int]
    chat_template: str | None

    def __init__(self) -> None:
        raise TypeError("use Tokenizer.from_metadata(...)")

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "<metadata>") -> Tokenizer:
        """Build the tokenizer from GGUF metadata; `source` (usually the file path) prefixes error messages.

        Raises GGUFError when the tokenizer metadata is missing or inconsistent, and UnsupportedModelError for
        a tokenizer type (`tokenizer.ggml.model`) that is valid in llama.cpp but not implemented here.
        """
        self = object.__new__(cls)
        self._source = source
        model = _get(metadata, "tokenizer.ggml.model", str, source, required=True)
        if model in _UNSUPPORTED_MODELS:
            raise UnsupportedModelError(f"{source}: tokenizer model {model!r} is not supported (only 'gpt2', 'llama')")
        if model not in ("gpt2", "llama"):
            raise GGUFError(f"{source}: unknown tokenizer.ggml.model {model!r}")
        self._is_spm = model == "llama"

        tokens = _get_list(metadata, "tokenizer.ggml.tokens", str, source, required=True)
        assert tokens is not None
        n = len(tokens)
        if n == 0:
            raise GGUFError(f"{source}: tokenizer.ggml.tokens is empty")
        # llama.cpp renames empty tokens rather than rejecting the file.
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        scores = _get_list(metadata, "tokenizer.ggml.scores", (int, float), source)
        types = _get_list(metadata, "tokenizer.ggml.token_type", int, source)
        for key, values in (("tokenizer.ggml.scores", scores), ("tokenizer.ggml.token_type", types)):
            if values is not None and len(values) != n:
                raise GGUFError(f"{source}: {key} has {len(values)} entries but tokenizer.ggml.tokens has {n}")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != n:
            dup = next(t for i, t in enumerate(tokens) if vocab[t] != i)
            raise GGUFError(f"{source}: tokenizer.ggml.tokens lists {dup!r} more than once")
        self._tokens = tokens
        self._vocab = vocab
        self.vocab_size = n
        attrs = [_TYPE_TO_ATTR.get(t, ATTR_UNDEFINED) for t in types] if types is not None else [ATTR_NORMAL] * n
        self._attrs = attrs

        # Defaults of llama.cpp's loader per vocabulary type, then what the metadata says.
        if self._is_spm:
            ids: dict[str, int | None] = {"bos": 1, "eos": 2, "unk": 0}
            add_bos, add_eos, add_space_prefix = True, False, True
            backend_factory = lambda: build_spm_backend(tokens, scores or [0.0] * n, vocab, source)  # noqa: E731
        else:
            merges = _get_list(metadata, "tokenizer.ggml.merges", str, source, required=True)
            assert merges is not None
            pre_name = _get(metadata, "tokenizer.ggml.pre", str, source)
            pre = pre_tokenizer_type(pre_name, source)
            self.pre_tokenizer = pre
            ids = {"bos": 11, "eos": 11}
            # llama3 and tekken turn BOS on even without the flag; other gpt2 vocabularies don't.
            add_bos = pre in ("llama3", "tekken")
            add_eos, add_space_prefix = False, False
            backend_factory = lambda: build_bpe_backend(vocab, merges, pre, source)  # noqa: E731
        # Defaults outside the vocabulary are dropped, as are out-of-range ids from the metadata.
        ids = {name: value for name, value in ids.items() if value is not None and value < n}
        for name, key in _ID_KEYS:
            value = _get(metadata, key, int, source)
            if value is not None and 0 <= value < n:
                ids[name] = value
        add_bos = _get(metadata, "tokenizer.ggml.add_bos_token", bool, source, default=add_bos)
        add_eos = _get(metadata, "tokenizer.ggml.add_eos_token", bool, source, default=add_eos)
        add_space_prefix = _get(metadata, "tokenizer.ggml.add_space_prefix", bool, source, default=add_space_prefix)
        self.add_bos, self.add_eos, self._add_space_prefix = add_bos, add_eos, add_space_prefix
        self._mark_special_by_text(ids)
        self.bos_token_id = ids.get("bos")
        self.eos_token_id = ids.get("eos")
        if add_bos and self.bos_token_id is None:
            raise GGUFError(f"{source}: tokenizer.ggml.add_bos_token is set but the model has no BOS token")
        if add_eos and self.eos_token_id is None:
            raise GGUFError(f"{source}: tokenizer.ggml.add_eos_token is set but the model has no EOS token")
        name = _get(metadata, "general.name", str, source, default="") or ""
        if "phi-3" in name.lower() or "phi3" in name.lower():
            self._apply_phi3_rstrip()
        self.chat_template = _get(metadata, "tokenizer.chat_template", str, source)

        # Special tokens that llama.cpp splits out of the text before tokenizing, longest first.
        order = sorted((i for i in range(n) if attrs[i] & _SPECIAL_ATTRS), key=lambda i: -len(tokens[i]))
        self._specials_all = order
        self._specials_plain = [i for i in order if not attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]
        self._special_index = _SpecialIndex(tokens, order)
        self._backend: _HFTokenizer = backend_factory()
        self._byte_decoder = _byte_level_decoder()
        self._pieces: list[bytes | None] = [None] * n
        self._pieces_special: list[bytes | None] = [None] * n
        return self

    def _mark_special_by_text(self, ids: dict[str, int | None]) -> None:
        """llama.cpp's text heuristics: infer EOT/EOM/FIM ids, UNUSED control tokens, and the EOG set."""
        attrs, tokens = self._attrs, self._tokens
        for name, texts in _AUTODETECT:
            if ids.get(name) is not None:
                continue
            # llama.cpp takes the first hit of a hash-map walk; the lowest id is the deterministic equivalent.
            hit = next((i for i, t in enumerate(tokens) if t in texts), None)
            if hit is not None:
                ids[name] = hit
                attrs[hit] |= ATTR_CONTROL
        for i, t in enumerate(tokens):
            if attrs[i] & ATTR_CONTROL and "unused" in t:
                attrs[i] |= ATTR_UNUSED
        eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids.get(k) is not None}
        for i, t in enumerate(tokens):
            if t in _EOG_TEXTS:
                eog.add(i)
                attrs[i] |= ATTR_CONTROL
        eog.update(ids[k] for k in ("eos", "eot", "eom") if ids.get(k) is not None)  # type: ignore[misc]
        texts = {tokens[i]: i for i in eog}
        # gpt-oss / solar-open: "<|end|>" only ends a message there, not the generation.
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        # gemma4 / plamo2 have an ordinary "</s>".
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL
        self.eog_token_ids = frozenset(eog)
        self._ids = dict(ids)

    def _apply_phi3_rstrip(self) -> None:
        # llama.cpp strips whitespace after Phi-3's special tokens, except after these three.
        for i, a in enumerate(self._attrs):
            if a & _SPECIAL_ATTRS:
                self._attrs[i] |= ATTR_RSTRIP
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            i = self._vocab.get(text)
            if i is not None:
                self._attrs[i] = self._attrs[i] | ATTR_RSTRIP if on else self._attrs[i] & ~ATTR_RSTRIP

    # -- encoding ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.

        add_special adds BOS/EOS where the model asks for them; parse_special turns control-token text such as
        "<|im_start|>" into that token (user-defined tokens are always recognised, as in llama.cpp).
        """
        output: list[int] = []
        if add_special and self.add_bos:
            output.append(self.bos_token_id)  # type: ignore[arg-type]
        fragments = self._partition(text, parse_special) if text else []
        prev_special = True  # SentencePiece's dummy prefix goes at the start and after each special token
        for fragment in fragments:
            if isinstance(fragment, int):
                output.append(fragment)
                prev_special = True
                continue
            if self._is_spm:
                if self._add_space_prefix and prev_special:
                    fragment = " " + fragment
                fragment = fragment.replace(" ", SPACE_ESCAPE)
            output.extend(self._backend.encode(fragment, add_special_tokens=False).ids)
            prev_special = False
        if add_special and self.add_eos:
            output.append(self.eos_token_id)  # type: ignore[arg-type]
        return output

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split special tokens out of `text`, longest token first, as llama.cpp's tokenizer_st_partition."""
        fragments: list[str | int] = [text]
        present = self._special_index.present_in(text)
        if not present:
            return fragments
        candidates = self._specials_all if parse_special else self._specials_plain
        tokens, attrs = self._tokens, self._attrs
        for token_id in candidates:
            token_text = tokens[token_id]
            if token_text not in present:
                continue
            lstrip = attrs[token_id] & ATTR_LSTRIP
            rstrip = attrs[token_id] & ATTR_RSTRIP
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or token_text not in fragment:
                    split.append(fragment)
                    continue
                pieces = fragment.split(token_text)
                last = len(pieces) - 1
                for k, piece in enumerate(pieces):
                    if k > 0:
                        split.append(token_id)
                        if rstrip:
                            piece = piece.lstrip(_ASCII_SPACE)
                    if k < last and lstrip:
                        piece = piece.rstrip(_ASCII_SPACE)
                    if piece:
                        split.append(piece)
            fragments = split
        return fragments

    # -- decoding ----------------------------------------------------------------------------------------
    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes token `token_id` contributes to decoded text (llama.cpp's token_to_piece).

        With special=False, control and unknown tokens contribute nothing. A token may hold part of a UTF-8
        character, so join bytes before decoding them.
        """
        cache = self._pieces_special if special else self._pieces
        piece = cache[token_id]
        if piece is None:
            piece = cache[token_id] = self._piece(token_id, special)
        return piece

    def _piece(self, token_id: int, special: bool) -> bytes:
        attr = self._attrs[token_id]
        text = self._tokens[token_id]
        if not special and attr & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode()
        if attr & ATTR_NORMAL:
            if self._is_spm:
                return text.replace(SPACE_ESCAPE, " ").encode()
            decoder = self._byte_decoder
            out = bytearray()
            for ch in text:
                b = decoder.get(ch)
                if b is None:  # not byte-level text: llama.cpp writes a marker instead
                    out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text.encode() + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if attr & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""  # unused and undefined tokens render as nothing

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `token_ids`, as llama_detokenize(remove_special=skip, unparse_special=not skip).

        Unlike llama.cpp this never applies its `clean_spaces` clean-up (" ," -> ","), so decoding what
        `encode(text, add_special=False)` returned gives back `text` exactly. Invalid UTF-8 (a character cut
        between tokens) decodes to U+FFFD.
        """
        ids = list(token_ids)
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        remove_space = self._add_space_prefix
        if skip_special_tokens and self.add_bos and ids and ids[0] == self.bos_token_id:
            remove_space = False
            ids = ids[1:]
        if skip_special_tokens and self.add_eos and ids and ids[-1] == self.eos_token_id:
            ids = ids[:-1]
        special = not skip_special_tokens
        parts = [self.token_bytes(i, special) for i in ids]
        if remove_space and parts and parts[0].startswith(b" "):
            parts[0] = parts[0][1:]
        return b"".join(parts).decode("utf-8", errors="replace")

    # -- queries -----------------------------------------------------------------------------------------
    def is_special(self, token_id: int) -> bool:
        """Whether the token is control, user-defined or unknown (llama.cpp's special-token set)."""
        return bool(self._attrs[token_id] & _SPECIAL_ATTRS)

    def is_control(self, token_id: int) -> bool:
        """Whether the token is a control token (hidden by decode(skip_special_tokens=True))."""
        return bool(self._attrs[token_id] & ATTR_CONTROL)

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, if any."""
        return self._vocab.get(text)

    def id_to_token(self, token_id: int) -> str:
        """The token's text as the vocabulary stores it (byte-level or ▁-escaped)."""
        return self._tokens[token_id]

    def __repr__(self) -> str:
        kind = "spm" if self._is_spm else f"bpe/{self.pre_tokenizer}"
        return f"Tokenizer({self._source!r}, {kind}, vocab_size={self.vocab_size})"


class _SpecialIndex:
    """Finds which special-token texts occur in a string without scanning for each of thousands of tokens."""

    def __init__(self, tokens: Sequence[str], special_ids: Sequence[int]) -> None:
        # first character -> (distinct lengths, texts)
        groups: dict[str, tuple[set[int], set[str]]] = {}
        for i in special_ids:
            text = tokens[i]
            lengths, texts = groups.setdefault(text[0], (set(), set()))
            lengths.add(len(text))
            texts.add(text)
        self._groups = {c: (sorted(lengths), frozenset(texts)) for c, (lengths, texts) in groups.items()}

    def present_in(self, text: str) -> set[str]:
        found: set[str] = set()
        for first in self._groups.keys() & set(text):
            lengths, texts = self._groups[first]
            pos = text.find(first)
            while pos >= 0:
                for length in lengths:
                    candidate = text[pos : pos + length]
                    if len(candidate) < length:
                        break
                    if candidate in texts:
                        found.add(candidate)
                pos = text.find(first, pos + 1)
        return found


def _present(metadata: Mapping[str, Any], key: str, source: str, required: bool) -> bool:
    """Whether the key is there; a required key that is absent is a GGUFError naming the file and key."""
    if key in metadata:
        return True
    if required:
        raise GGUFError(f"{source}: missing tokenizer metadata key {key!r}")
    return False


def _get(
    metadata: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    source: str,
    *,
    required: bool = False,
    default: Any = None,
) -> Any:
    """A scalar metadata value of the given type, else `default`; GGUFError if mistyped or required+absent."""
    if not _present(metadata, key, source, required):
        return default
    value = metadata[key]
    # bool is an int in Python; an int id key holding a bool is still wrong, and vice versa.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GGUFError(f"{source}: metadata key {key!r} is {type(value).__name__}, expected {_names(kind)}")
    return value


def _get_list(
    metadata: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    source: str,
    *,
    required: bool = False,
) -> list[Any] | None:
    """An array metadata value whose items all have the given type."""
    if not _present(metadata, key, source, required):
        return None
    value = metadata[key]
    if not isinstance(value, (list, tuple)):
        raise GGUFError(f"{source}: metadata key {key!r} is {type(value).__name__}, expected an array")
    for i, item in enumerate(value):
        if not isinstance(item, kind) or isinstance(item, bool):
            raise GGUFError(f"{source}: {key}[{i}] is {type(item).__name__}, expected {_names(kind)}")
    return list(value)


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
