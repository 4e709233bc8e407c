"""The GGUF tokenizer against llama.cpp (llama-cpp-python, vocabulary only) on the three named models."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.reader import GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

CORPUS = (
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "héllo wörld, àçcénts: naïve café Ångström",
    "中文测试，你好世界。日本語のテキストです。한국어 텍스트",
    "emoji 😀🎉 👍🏽 👨‍👩‍👧 flags 🇫🇷",
    "def f(x):\n\treturn x ** 2  # square\n\n\nclass A:\n    pass\n",
    "    four spaces\n        eight spaces\n\t\ttwo tabs\r\n",
    "\n",
    "\n\n\n\nfour newlines",
    " " * 40 + "forty spaces",
    "1234567890123456789 3.14159 1e-10 42",
    "don't I'LL we've THEY'RE it's",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "a</s>b <s> <bos>",
    "<table><tr><td>cell</td></tr></table> <b>bold</b>",
    "<tool_call>{}</tool_call>",
    "<|im_start|><|im_start|>",
    "x" * 300,
)

EXPECTED_EOG = {
    "smollm2-135m": {"<|endoftext|>", "<|im_end|>", "<reponame>"},
    "qwen2.5-coder-0.5b": {
        "<|endoftext|>",
        "<|im_end|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "</s>",
    },
    "gemma3-270m": {"<eos>", "<end_of_turn>", "</s>"},
}


@dataclass
class Pair:
    """Our tokenizer and llama.cpp's, built from the same GGUF file."""

    name: str
    ours: Tokenizer
    llama: Any  # llama_cpp.Llama
    vocab: Any  # llama_vocab pointer

    def encode(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return list(self.llama.tokenize(text.encode(), add_bos=add_special, special=parse_special))

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> str:
        """llama.cpp's llama_detokenize (llama-cpp-python's own detokenize truncates pieces over 32 bytes)."""
        size = 64 + 64 * len(ids)
        buf = ctypes.create_string_buffer(size)
        arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, remove_special, unparse_special)
        assert 0 <= n <= size
        return buf.raw[:n].decode("utf-8", errors="replace")

    def piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, 1024, 0, special)
        assert 0 <= n <= 1024
        return buf.raw[:n]


def read_metadata(path: Path) -> dict[str, Any]:
    with GGUFFile(path) as gguf_file:
        return dict(gguf_file.metadata)


@pytest.fixture(scope="module")
def pair(named_model: tuple[str, Path]) -> Iterator[Pair]:
    name, path = named_model
    ours = Tokenizer.from_metadata(read_metadata(path), source=str(path))
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield Pair(name, ours, llama, llama_cpp.llama_model_get_vocab(llama.model))
    llama.close()


@pytest.mark.slow
@pytest.mark.parametrize("add_special", [True, False])
@pytest.mark.parametrize("parse_special", [True, False])
def test_encode_matches_llama_cpp(pair: Pair, add_special: bool, parse_special: bool) -> None:
    for text in CORPUS:
        expected = pair.encode(text, add_special, parse_special)
        assert pair.ours.encode(text, add_special, parse_special) == expected, (pair.name, text)


@pytest.mark.slow
@pytest.mark.parametrize("parse_special", [True, False])
def test_decode_is_lossless(pair: Pair, parse_special: bool) -> None:
    for text in CORPUS:
        ids = pair.ours.encode(text, add_special=False, parse_special=parse_special)
        assert pair.ours.decode(ids) == text, (pair.name, text)


@pytest.mark.slow
def test_decode_matches_llama_detokenize(pair: Pair) -> None:
    for text in CORPUS:
        ids = pair.ours.encode(text, add_special=True, parse_special=True)
        for skip in (True, False):
            expected = pair.detokenize(ids, remove_special=skip, unparse_special=not skip)
            assert pair.ours.decode(ids, skip_special_tokens=skip) == expected, (pair.name, text, skip)


@pytest.mark.slow
def test_token_bytes_match_token_to_piece(pair: Pair) -> None:
    ours = pair.ours
    # Every special token plus a stride through the rest keeps this fast on a 262k vocabulary.
    ids = sorted({*range(0, ours.vocab_size, 97), *(i for i in range(ours.vocab_size) if ours.is_special(i))})
    for token_id in ids:
        for special in (True, False):
            assert ours.token_bytes(token_id, special) == pair.piece(token_id, special), (token_id, special)


@pytest.mark.slow
def test_special_tokens_match_llama_cpp(pair: Pair) -> None:
    ours, vocab = pair.ours, pair.vocab
    assert ours.vocab_size == llama_cpp.llama_vocab_n_tokens(vocab)
    assert ours.bos_token_id == llama_cpp.llama_vocab_bos(vocab)
    assert ours.eos_token_id == llama_cpp.llama_vocab_eos(vocab)
    assert ours.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
    assert ours.add_eos == llama_cpp.llama_vocab_get_add_eos(vocab)
    eog = {i for i in range(ours.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert ours.eog_token_ids == eog
    assert {ours.id_to_token(i) for i in ours.eog_token_ids} == EXPECTED_EOG[pair.name]
    assert ours.eos_token_id in ours.eog_token_ids
    assert ours.chat_template == pair.llama.metadata.get("tokenizer.chat_template")


_FRAGMENTS = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=16),
    st.text(st.sampled_from(" \t\n\r'sStT0123456789aéß中😀.,-_<>|/"), max_size=12),
    st.sampled_from(
        [
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<start_of_turn>",
            "<end_of_turn>",
            "</s>",
            "<b>",
            "  ",
        ]
    ),
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(_FRAGMENTS, max_size=6).map("".join), add_special=st.booleans(), parse_special=st.booleans())
def test_random_text_matches_llama_cpp(pair: Pair, text: str, add_special: bool, parse_special: bool) -> None:
    ids = pair.ours.encode(text, add_special, parse_special)
    assert ids == pair.encode(text, add_special, parse_special)
    # Some vocabularies (SmolLM2) lack a few byte tokens, so compare decoding with llama.cpp, not with `text`.
    assert pair.ours.decode(ids) == pair.detokenize(ids, remove_special=False, unparse_special=True)


# -- synthetic metadata: no model files needed ------------------------------------------------------------


def _bpe_metadata(**overrides: Any) -> dict[str, Any]:
    # A byte-level vocabulary: "Ġ" is the space byte; "h e" style merges build "he", "Ġhe", "llo".
    tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "he",
        "ll",
        "llo",
        "Ġhe",
        "w",
        "r",
        "d",
    ]
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2),
        "tokenizer.ggml.merges": ["h e", "l l", "ll o", "Ġ he"],
        "tokenizer.ggml.eos_token_id": 0,
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def test_synthetic_bpe_encodes_and_decodes() -> None:
    tok = Tokenizer.from_metadata(_bpe_metadata())
    ids = tok.encode("hello he<|im_start|>", parse_special=True)
    assert [tok.id_to_token(i) for i in ids] == ["he", "llo", "Ġhe", "<|im_start|>"]
    assert tok.decode(ids) == "hello he<|im_start|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hello he"
    assert tok.token_bytes(6) == b" "
    assert tok.add_bos is False and tok.eos_token_id == 0
    assert tok.eog_token_ids == {0}  # eos, also found by its text "<|endoftext|>"
    assert tok.is_special(1) and not tok.is_special(7)


def test_unknown_pre_tokenizer_falls_back_to_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.from_metadata(_bpe_metadata(**{"tokenizer.ggml.pre": "no-such-pre"}), source="m.gguf")
    assert "no-such-pre" in caplog.text
    assert tok.decode(tok.encode("hello")) == "hello"


@pytest.mark.parametrize(
    ("overrides", "fault"),
    [
        ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
        ({"tokenizer.ggml.tokens": []}, "empty"),
        ({"tokenizer.ggml.tokens": "abc"}, "array"),
        ({"tokenizer.ggml.tokens": ["a", "b", 3]}, "tokenizer.ggml.tokens[2]"),
        ({"tokenizer.ggml.tokens": ["a", "a"], "tokenizer.ggml.token_type": [1, 1]}, "more than once"),
        ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
        ({"tokenizer.ggml.model": "klingon"}, "unknown tokenizer.ggml.model"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
        ({"tokenizer.ggml.scores": [0.0]}, "scores has 1 entries"),
        ({"tokenizer.ggml.merges": None}, "tokenizer.ggml.merges"),
        ({"tokenizer.ggml.merges": ["h e", "hello"]}, "bad merge"),
        ({"tokenizer.ggml.eos_token_id": "zero"}, "eos_token_id"),
        ({"tokenizer.ggml.add_bos_token": "yes"}, "add_bos_token"),
    ],
)
def test_malformed_metadata_raises(overrides: dict[str, Any], fault: str) -> None:
    metadata = _bpe_metadata()
    for key, value in overrides.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    with pytest.raises(GGUFError, match=r"bad\.gguf") as info:
        Tokenizer.from_metadata(metadata, source="bad.gguf")
    assert fault in str(info.value)
    assert not isinstance(info.value, UnsupportedModelError)


def test_unsupported_tokenizer_model() -> None:
    with pytest.raises(UnsupportedModelError, match="bert"):
        Tokenizer.from_metadata(_bpe_metadata(**{"tokenizer.ggml.model": "bert"}), source="bert.gguf")


def test_spm_synthetic_dummy_prefix_and_byte_fallback() -> None:
    # Scores rank merges: "▁a" (-1) beats "ab" (-2), so " ab" -> "▁a" "b"; "é" falls back to UTF-8 bytes.
    tokens = ["<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", "▁", "a", "b", "▁a", "ab"]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, 0.0, 0.0, -5.0, -6.0, -7.0, -1.0, -2.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 6, 6, 1, 1, 1, 1, 1],
    }
    tok = Tokenizer.from_metadata(metadata)
    assert tok.add_bos and tok.bos_token_id == 1 and tok.eos_token_id == 2
    ids = tok.encode("ab é")
    assert [tok.id_to_token(i) for i in ids] == ["<s>", "▁a", "b", "▁", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids[1:]) == "ab é"
    no_prefix = Tokenizer.from_metadata({**metadata, "tokenizer.ggml.add_space_prefix": False})
    assert [no_prefix.id_to_token(i) for i in no_prefix.encode("ab", add_special=False)] == ["ab"]
