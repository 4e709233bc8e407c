"""Benchmark prompts: random token ids of an exact length, or prompts read from a file.

Random prompts are token ids, not text: decoding random ids and re-encoding them does not give the same ids
back, so only ids guarantee every prompt is exactly ``input_len`` tokens. They avoid special tokens (control,
user-defined, unknown), BOS/EOS and end-of-generation ids, which would change how the model treats the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from rocmforge.errors import ValidationError


class Vocabulary(Protocol):
    """What random prompts need of a tokenizer (rocmforge.gguf.tokenizer.Tokenizer provides it)."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    eog_token_ids: frozenset[int]

    def is_special(self, token_id: int) -> bool: ...


def sampleable_token_ids(vocab: Vocabulary, model_vocab_size: int | None = None) -> np.ndarray:
    """Ids a random prompt may use, ascending.

    ``model_vocab_size`` (the embedding's row count) caps the range when it is smaller than the tokenizer's:
    the engine rejects ids the model has no row for.
    """
    size = vocab.vocab_size if model_vocab_size is None else min(vocab.vocab_size, model_vocab_size)
    excluded: set[int] = set(vocab.eog_token_ids)
    excluded.update(i for i in (vocab.bos_token_id, vocab.eos_token_id) if i is not None)
    ids = np.fromiter(
        (i for i in range(size) if i not in excluded and not vocab.is_special(i)), dtype=np.int64, count=-1
    )
    if ids.size == 0:
        raise ValidationError("the vocabulary has no ordinary tokens to build random prompts from")
    return ids


def random_prompts(
    token_ids: Collection[int] | np.ndarray, num_prompts: int, input_len: int, seed: int
) -> list[list[int]]:
    """``num_prompts`` prompts of exactly ``input_len`` ids drawn uniformly (with replacement) from ``token_ids``.

    The same seed gives the same prompts. Uniform random ids make the first block of any two prompts differ
    with overwhelming probability, so the prefix cache never shortens a benchmark's prefill.
    """
    _check_positive("num_prompts", num_prompts)
    _check_positive("input_len", input_len)
    pool = np.asarray(list(token_ids) if not isinstance(token_ids, np.ndarray) else token_ids, dtype=np.int64)
    if pool.size == 0:
        raise ValidationError("no token ids to draw random prompts from")
    rng = np.random.default_rng(seed)
    drawn = rng.choice(pool, size=(num_prompts, input_len), replace=True)
    return [row.tolist() for row in drawn]


def load_prompt_texts(path: str | Path) -> list[str]:
    """The prompts of a dataset file: a JSON list of strings if the name ends in .json, else one per line.

    Blank lines are skipped. Any fault (missing, unreadable, not UTF-8, malformed JSON, not a list of
    non-empty strings, no prompts) raises ValidationError naming the file.
    """
    path = Path(path)
    where = f"dataset {path}"
    if not path.exists():
        raise ValidationError(f"{where}: no such file")
    if not path.is_file():
        raise ValidationError(f"{where}: not a regular file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValidationError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        texts = _json_prompts(content, where)
    else:
        texts = [line for line in content.splitlines() if line.strip()]
    if not texts:
        raise ValidationError(f"{where}: holds no prompts")
    return texts


def _json_prompts(content: str, where: str) -> list[str]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, list):
        raise ValidationError(f"{where}: a .json dataset must be a list of strings, got a JSON {_json_type(data)}")
    for index, item in enumerate(data):
        if not isinstance(item, str):
            raise ValidationError(f"{where}: item {index} is a JSON {_json_type(item)}, not a string")
        if not item.strip():
            raise ValidationError(f"{where}: item {index} is an empty prompt")
    return data


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def file_prompts(
    texts: Sequence[str], encode: Callable[[str], list[int]], num_prompts: int | None, input_len: int | None
) -> list[list[int]]:
    """Token ids of the first ``num_prompts`` texts (all if None), each cut to ``input_len`` tokens if given.

    Asking for more prompts than the file holds is an error rather than a silent repeat: repeated prompts
    would be served from the prefix cache and inflate the throughput.
    """
    if num_prompts is not None:
        _check_positive("num_prompts", num_prompts)
        if num_prompts > len(texts):
            raise ValidationError(f"the dataset holds {len(texts)} prompts, fewer than --num-prompts {num_prompts}")
    if input_len is not None:
        _check_positive("input_len", input_len)
    chosen = texts if num_prompts is None else texts[:num_prompts]
    prompts = []
    for index, text in enumerate(chosen):
        ids = encode(text)
        if not ids:
            raise ValidationError(f"dataset prompt {index} encodes to no tokens")
        prompts.append(ids if input_len is None else ids[:input_len])
    return prompts


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError(f"{name} must be an integer >= 1, got {value!r}")


def check_fits(prompts: Sequence[Sequence[int]], output_len: int, max_model_len: int) -> None:
    """Refuse up front a workload some request of which the engine would reject mid-run."""
    longest = max((len(p) for p in prompts), default=0)
    if longest + output_len > max_model_len:
        raise ValidationError(
            f"a {longest}-token prompt plus {output_len} output tokens exceeds the model's {max_model_len}-token "
            "context: lower --input-len or --output-len"
        )
