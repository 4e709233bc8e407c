"""IncrementalDetokenizer on the named models' real tokenizers: UTF-8 safety, exact stop-string cuts, chunking."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rocmforge.engine.detokenizer import DetokenizerDelta, IncrementalDetokenizer
from rocmforge.gguf.reader import GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m")

TEXTS = (
    "héllo wörld, ça va? naïve café",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷🇯🇵 done",
    "日本語のテキスト、中文文本，한국어 텍스트。",
    'def f(x: int) -> str:\n    return f"{x!r}"\n\n\nclass A:\n    pass\n',
    "mixed: Ünïcödé 😀 世界\n\nnext paragraph ab abc abcd\n\nend",
)


@pytest.fixture(scope="module")
def tokenizers(model_paths: dict[str, Path]) -> dict[str, Tokenizer]:
    out = {}
    for name in MODELS:
        path = model_paths[name]
        out[name] = Tokenizer.from_metadata(GGUFFile(path).metadata, source=str(path))
    return out


@pytest.fixture(params=MODELS)
def tok(request: pytest.FixtureRequest, tokenizers: dict[str, Tokenizer]) -> Tokenizer:
    return tokenizers[request.param]


def chunked(ids: Sequence[int], rng: random.Random | None) -> list[list[int]]:
    """One id at a time without rng, else random chunk sizes 1..5 (and the odd empty update)."""
    if rng is None:
        return [[i] for i in ids]
    chunks: list[list[int]] = []
    pos = 0
    while pos < len(ids):
        size = rng.choice((0, 1, 1, 2, 3, 5))
        chunks.append(list(ids[pos : pos + size]))
        pos += size
    return chunks


def run(
    tok: Tokenizer,
    ids: Sequence[int],
    rng: random.Random | None = None,
    **kwargs: object,
) -> tuple[IncrementalDetokenizer, list[DetokenizerDelta], str]:
    """Stream `ids` through a detokenizer; checks the per-delta invariants and returns (detok, deltas, streamed)."""
    detok = IncrementalDetokenizer(tok, [], **kwargs)  # type: ignore[arg-type]
    deltas = []
    for chunk in chunked(ids, rng):
        delta = detok.update(chunk)
        assert isinstance(delta.text, str)
        assert "\ufffd" not in delta.text  # no character split between tokens leaks out
        if deltas and deltas[-1].stopped:
            assert delta == DetokenizerDelta("")
        deltas.append(delta)
    tail = detok.finish()
    streamed = "".join(d.text for d in deltas) + tail
    assert streamed == detok.output_text
    assert [d.stop_str for d in deltas if d.stopped] == ([detok.stop_str] if detok.stop_str is not None else [])
    return detok, deltas, streamed


def expected(full: str, stops: Sequence[str], include: bool) -> tuple[str, str | None]:
    """The reference cut: the stop that ends first (longest on a tie), found by brute force."""
    best: tuple[int, int, str] | None = None
    for s in stops:
        if s and (i := full.find(s)) >= 0 and (best is None or (i + len(s), -len(s)) < best[:2]):
            best = (i + len(s), -len(s), s)
    if best is None:
        return full, None
    end, _, s = best
    return (full[:end] if include else full[: end - len(s)]), s


def check(tok: Tokenizer, ids: Sequence[int], stops: Sequence[str], rng: random.Random | None, **kw: object) -> str:
    include = bool(kw.get("include_stop_str_in_output", False))
    skip = bool(kw.get("skip_special_tokens", True))
    detok, deltas, streamed = run(tok, ids, rng, stop=stops, **kw)
    want, want_stop = expected(tok.decode(ids, skip_special_tokens=skip), stops, include)
    assert streamed == want
    assert detok.stop_str == want_stop
    if want_stop is not None and not include:
        assert all(want_stop not in d.text for d in deltas)
    return streamed


# -- no stop strings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_one_token_at_a_time(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special=False)
    _, deltas, streamed = run(tok, ids)
    assert streamed == text == tok.decode(ids, skip_special_tokens=True)
    # Nothing is held back without stop strings except an incomplete character: text flows token by token.
    assert sum(1 for d in deltas if d.text) >= len(ids) // 3


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random_chunks(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    for text in TEXTS:
        ids = tok.encode(text, add_special=False)
        assert run(tok, ids, rng)[2] == text


def test_split_character_is_held_until_complete(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2-135m"]
    ids = tok.encode("a😀b", add_special=False)
    assert any(not tok.token_bytes(i).decode("utf-8", errors="ignore") for i in ids)  # some token is a fragment
    detok = IncrementalDetokenizer(tok, [])
    texts = [detok.update([i]).text for i in ids]
    assert "".join(texts) == "a😀b"
    assert all("\ufffd" not in t for t in texts)


def test_incomplete_tail_becomes_replacement_only_at_finish(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2-135m"]
    ids = tok.encode("x😀", add_special=False)
    cut = next(n for n in range(1, len(ids)) if "\ufffd" in tok.decode(ids[:n]))
    detok = IncrementalDetokenizer(tok, [])
    assert detok.update(ids[:cut]).text == "x"
    assert detok.finish() == "\ufffd" * (tok.decode(ids[:cut]).count("\ufffd"))
    assert detok.output_text == tok.decode(ids[:cut])


# -- special tokens --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tok: Tokenizer, skip: bool) -> None:
    eos = tok.eos_token_id
    assert eos is not None
    ids = [*tok.encode("hello 世界", add_special=True), eos]
    streamed = check(tok, ids, (), None, skip_special_tokens=skip)
    eos_text = tok.id_to_token(eos)
    if tok.is_control(eos):
        assert (eos_text in streamed) is not skip


def test_leading_space_dropped_like_decode(tokenizers: dict[str, Tokenizer]) -> None:
    # A SentencePiece model with add_space_prefix: decode() drops the first token's leading space.
    spm = copy.copy(tokenizers["gemma3-270m"])
    spm._add_space_prefix = True  # type: ignore[attr-defined]
    ids = spm.encode("hello world", add_special=False)  # encode puts the space prefix in front
    assert spm.token_bytes(ids[0]).startswith(b" ")
    assert check(spm, ids, (), None) == spm.decode(ids, skip_special_tokens=True) == "hello world"


# -- stop strings ----------------------------------------------------------------------------------------------
STOP_CASES = (
    ("def f(x):\n    return x\n\ndef g():\n    pass", ["\n\n"]),  # whole token(s) on some vocabularies
    ("the quick brown fox jumps", ["ick br"]),  # spans tokens, starts and ends inside tokens
    ("the quick brown fox jumps", ["qu"]),  # inside one token
    ("xx ab abc abcd", ["abc", "ab"]),  # overlapping prefixes: "ab" ends first
    ("xx abd abc", ["abc", "ab"]),
    ("xx abcd", ["abcd", "bc"]),  # "bc" ends first even though "abcd" starts first
    ("hello world", ["hello"]),  # at the very start
    ("hello world", ["h"]),
    ("日本語のテキスト", ["のテ"]),  # CJK spanning tokens
    ("smile 😀 please", ["😀"]),  # a stop made of a character split between tokens
    ("smile 😀 please", ["e 😀 p"]),
    ("aaaaab", ["aab"]),  # needs the held back text to slide, not reset
    ("no match here", ["zzz", "herex"]),  # held back text released at the end
)


@pytest.mark.parametrize(("text", "stops"), STOP_CASES)
@pytest.mark.parametrize("include", [False, True])
def test_stop_strings(tok: Tokenizer, text: str, stops: list[str], include: bool) -> None:
    ids = tok.encode(text, add_special=False)
    for rng in (None, random.Random(1), random.Random(2)):
        check(tok, ids, stops, rng, include_stop_str_in_output=include)


def test_stop_cut_exactly_and_held_text_released(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["qwen2.5-coder-0.5b"]
    ids = tok.encode("one\n\ntwo", add_special=False)
    detok, deltas, streamed = run(tok, ids, stop=["\n\n"])
    assert streamed == "one"
    assert detok.stop_str == "\n\n"
    assert [d.stop_str for d in deltas if d.stopped] == ["\n\n"]
    # A lone newline could start "\n\n" so it is held; the next text shows it was not and releases it.
    detok = IncrementalDetokenizer(tok, [], stop=["\n\n"])
    texts = [detok.update([i]).text for i in tok.encode("a\nb\nc", add_special=False)]
    assert "".join(texts) == "a\nb\nc"
    assert all(not t.endswith("\n") for t in texts)


def test_updates_after_stop_are_empty(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2-135m"]
    detok = IncrementalDetokenizer(tok, [], stop=["STOP"])
    ids = tok.encode("text STOP more", add_special=False)
    deltas = [detok.update([i]) for i in ids]
    assert "".join(d.text for d in deltas) == "text "
    assert detok.update(tok.encode(" later", add_special=False)) == DetokenizerDelta("")
    assert detok.finish() == ""
    assert detok.output_token_ids == ids + tok.encode(" later", add_special=False)


def test_stop_on_special_token_text(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["qwen2.5-coder-0.5b"]
    ids = tok.encode("hi<|im_end|>there", add_special=False, parse_special=True)
    check(tok, ids, ["<|im_end|>"], None, skip_special_tokens=False)
    assert check(tok, ids, ["<|im_end|>"], None, skip_special_tokens=True) == "hithere"


def test_invalid_token_id(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2-135m"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        IncrementalDetokenizer(tok, []).update([tok.vocab_size])


# -- property test ---------------------------------------------------------------------------------------------
# Words as well as characters, so the text has multi-character tokens and repeated near-stop prefixes.
_TEXT = st.lists(
    st.sampled_from([*"ab \n\txyz.,:()éüñ日本語中文😀🎉👍\u200d한국", "def ", "abc", "\n\n", "  ", "hello", " world"]),
    min_size=1,
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(MODELS),
    pieces=st.lists(_TEXT, min_size=1, max_size=3),
    data=st.data(),
    include=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_text_chunks_and_stop(
    tokenizers: dict[str, Tokenizer], model: str, pieces: list[str], data: st.DataObject, include: bool, seed: int
) -> None:
    tok = tokenizers[model]
    text = "".join(pieces)
    ids = tok.encode(text, add_special=False)
    full = tok.decode(ids, skip_special_tokens=True)
    start = data.draw(st.integers(0, len(full) - 1))
    stop = full[start : data.draw(st.integers(start + 1, min(len(full), start + 6)))]
    extra = data.draw(st.lists(st.text(alphabet="ab\n😀", min_size=1, max_size=3), max_size=2))
    check(tok, ids, [stop, *extra], random.Random(seed), include_stop_str_in_output=include)
