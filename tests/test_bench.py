"""`rocmforge bench`: percentile statistics, benchmark workloads, and real end-to-end runs on smollm2-135m."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rocmforge.bench import workload
from rocmforge.bench.latency import measure_latency
from rocmforge.bench.stats import summarize
from rocmforge.bench.throughput import RequestTiming, summarize_run
from rocmforge.cli.main import main
from rocmforge.errors import ValidationError
from rocmforge.sampling_params import SamplingParams

# ---------------------------------------------------------------------------------------------------- stats


def test_summary_matches_numpy() -> None:
    values = np.random.default_rng(3).exponential(2.0, size=257)
    summary = summarize(values.tolist(), (10, 50, 90, 99, 99.9))
    assert summary.count == 257
    assert summary.mean == pytest.approx(values.mean())
    assert summary.std == pytest.approx(values.std())
    assert (summary.min, summary.max) == (values.min(), values.max())
    for q in (10, 50, 90, 99, 99.9):
        assert summary.percentile(q) == pytest.approx(np.percentile(values, q))
    assert list(summary.percentiles) == ["p10", "p50", "p90", "p99", "p99.9"]


def test_summary_known_values() -> None:
    summary = summarize([float(v) for v in range(1, 101)])  # 1..100: linear interpolation between ranks
    assert summary.percentiles == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01})
    assert summarize([4.0]).to_dict() == {"count": 1, "mean": 4.0, "std": 0.0, "min": 4.0, "max": 4.0} | {
        "p50": 4.0,
        "p90": 4.0,
        "p99": 4.0,
    }


def test_summary_of_nothing_is_none_not_nan() -> None:
    summary = summarize([])
    assert summary.count == 0 and summary.mean is None and summary.percentiles == dict.fromkeys(["p50", "p90", "p99"])
    json.dumps(summary.to_dict(), allow_nan=False)  # NaN would make the --json file invalid


def test_summary_rejects_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="percentiles"):
        summarize([1.0], (50, 101))


def test_run_summary_ttft_tpot_e2e() -> None:
    timings = [
        RequestTiming(8, 5, submitted=0.0, first_token=0.5, finished=1.3, inter_token_s=(0.2, 0.2, 0.2, 0.2)),
        RequestTiming(8, 5, submitted=0.0, first_token=1.0, finished=3.0, cached_tokens=4, inter_token_s=(0.5,) * 4),
        RequestTiming(6, 1, submitted=0.1, first_token=0.4, finished=0.4),  # one token: no TPOT
    ]
    result = summarize_run(timings, elapsed_s=2.0)
    assert (result.prompt_tokens, result.output_tokens, result.cached_tokens) == (22, 11, 4)
    assert result.requests_per_s == 1.5 and result.output_tokens_per_s == 5.5 and result.total_tokens_per_s == 16.5
    assert result.ttft_ms.count == 3 and result.ttft_ms.mean == pytest.approx((500 + 1000 + 300) / 3)
    assert result.tpot_ms.count == 2 and result.tpot_ms.min == pytest.approx(200) and result.tpot_ms.max == 500
    assert result.itl_ms.count == 8 and result.itl_ms.mean == pytest.approx(350)
    assert result.e2e_ms.max == pytest.approx(3000) and result.e2e_ms.min == pytest.approx(300)
    requests = result.to_dict()["requests"]
    assert requests[2]["tpot_ms"] is None and requests[0]["ttft_ms"] == pytest.approx(500)


# ---------------------------------------------------------------------------------------------------- workload


@dataclass
class FakeVocab:
    vocab_size: int = 50
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    eog_token_ids: frozenset[int] = frozenset({2, 7})
    special: set[int] = field(default_factory=lambda: {0, 3, 49})

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special


def test_sampleable_ids_skip_special_bos_eos_and_eog() -> None:
    ids = workload.sampleable_token_ids(FakeVocab()).tolist()
    assert ids == [i for i in range(50) if i not in {0, 1, 2, 3, 7, 49}]
    assert workload.sampleable_token_ids(FakeVocab(), model_vocab_size=10).tolist() == [4, 5, 6, 8, 9]
    with pytest.raises(ValidationError, match="no ordinary tokens"):
        workload.sampleable_token_ids(FakeVocab(vocab_size=4))


def test_random_prompts_exact_length_seeded_and_within_the_pool() -> None:
    pool = workload.sampleable_token_ids(FakeVocab())
    prompts = workload.random_prompts(pool, 6, 33, seed=5)
    assert len(prompts) == 6 and all(len(p) == 33 for p in prompts)
    assert all(isinstance(t, int) for p in prompts for t in p)
    assert {t for p in prompts for t in p} <= set(pool.tolist())
    assert workload.random_prompts(pool, 6, 33, seed=5) == prompts
    assert workload.random_prompts(pool, 6, 33, seed=6) != prompts
    with pytest.raises(ValidationError, match="input_len"):
        workload.random_prompts(pool, 2, 0, seed=0)


@pytest.mark.slow
def test_random_prompts_avoid_the_real_tokenizers_special_ids(model_paths: dict[str, Path]) -> None:
    from rocmforge.gguf.reader import GGUFFile
    from rocmforge.gguf.tokenizer import Tokenizer

    path = model_paths["smollm2-135m"]
    with GGUFFile(path) as gguf_file:
        tokenizer = Tokenizer.from_metadata(dict(gguf_file.metadata), source=str(path))
    pool = workload.sampleable_token_ids(tokenizer)
    used = {t for p in workload.random_prompts(pool, 64, 128, seed=0) for t in p}
    assert not any(tokenizer.is_special(t) for t in used)
    assert not used & (tokenizer.eog_token_ids | {tokenizer.bos_token_id, tokenizer.eos_token_id})
    assert 0 < pool.size < tokenizer.vocab_size


def test_prompt_file_one_per_line_and_json(tmp_path: Path) -> None:
    lines = tmp_path / "prompts.txt"
    lines.write_text("first prompt\n\n  \nsecond, with [brackets]\r\nthird\n", encoding="utf-8")
    assert workload.load_prompt_texts(lines) == ["first prompt", "second, with [brackets]", "third"]
    as_json = tmp_path / "prompts.json"
    as_json.write_text(json.dumps(["a\nmulti-line prompt", "b"]), encoding="utf-8")
    assert workload.load_prompt_texts(as_json) == ["a\nmulti-line prompt", "b"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "\n  \n", "holds no prompts"),
        ("bad.json", '["a", ', "not valid JSON"),
        ("dict.json", '{"prompts": ["a"]}', "must be a list of strings, got a JSON object"),
        ("mixed.json", '["a", 3]', "item 1 is a JSON number, not a string"),
        ("blank.json", '["a", " "]', "item 1 is an empty prompt"),
        ("none.json", "[]", "holds no prompts"),
    ],
)
def test_bad_prompt_files_say_what_is_wrong(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValidationError, match=message) as info:
        workload.load_prompt_texts(path)
    assert str(path) in str(info.value)


def test_missing_unreadable_and_binary_prompt_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        workload.load_prompt_texts(tmp_path / "missing.txt")
    with pytest.raises(ValidationError, match="not a regular file"):
        workload.load_prompt_texts(tmp_path)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValidationError, match="not UTF-8"):
        workload.load_prompt_texts(binary)


def test_file_prompts_cut_to_input_len_and_count() -> None:
    def encode(text: str) -> list[int]:
        return [len(word) for word in text.split()]

    texts = ["a bb ccc dddd", "ee f", "ggg"]
    assert workload.file_prompts(texts, encode, None, None) == [[1, 2, 3, 4], [2, 1], [3]]
    assert workload.file_prompts(texts, encode, 2, 3) == [[1, 2, 3], [2, 1]]
    with pytest.raises(ValidationError, match="holds 3 prompts, fewer than --num-prompts 4"):
        workload.file_prompts(texts, encode, 4, None)
    with pytest.raises(ValidationError, match="encodes to no tokens"):
        workload.file_prompts(["   "], encode, None, None)


def test_workload_must_fit_the_context() -> None:
    workload.check_fits([[1] * 10, [1] * 20], output_len=12, max_model_len=32)
    with pytest.raises(ValidationError, match=r"20-token prompt plus 13 output tokens exceeds .* 32-token"):
        workload.check_fits([[1] * 10, [1] * 20], output_len=13, max_model_len=32)


def test_latency_needs_a_timed_batch() -> None:
    with pytest.raises(ValueError, match="more than 1 batches"):
        measure_latency(None, [[[1]]], SamplingParams(), num_warmup=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- CLI


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> None:
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rocmforge: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_mistakes_fail_fast_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # All of these are caught before the model loads: each costs milliseconds.
    _one_line_error(capsys, ["bench", "throughput", "--num-prompts", "0"], "--num-prompts must be >= 1")
    _one_line_error(capsys, ["bench", "latency", "--num-iters-warmup", "-1"], "--num-iters-warmup must be >= 0")
    _one_line_error(capsys, ["bench", "throughput", "--dataset", str(tmp_path / "nope.txt")], "no such file")
    _one_line_error(capsys, ["bench", "latency", "--json", str(tmp_path / "no" / "r.json")], "does not exist")
    (tmp_path / "two.txt").write_text("a\nb\n", encoding="utf-8")
    dataset = ["bench", "throughput", "--dataset", str(tmp_path / "two.txt"), "--num-prompts", "3"]
    _one_line_error(capsys, dataset, "holds 2 prompts, fewer than --num-prompts 3")
    _one_line_error(capsys, ["bench", "throughput", "--model", str(tmp_path / "x.gguf")], "x.gguf")
    _one_line_error(capsys, ["bench", "throughput", "--max-num-seqs", "0"], "--max-num-seqs must be >= 1")


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench", "--help"], ["bench", "throughput", "--help"], ["bench", "latency", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert "usage: rocmforge bench" in capsys.readouterr().out


def _check_summary(summary: dict[str, Any], count: int) -> None:
    assert summary["count"] == count
    assert 0 < summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert summary["min"] <= summary["mean"] <= summary["max"]


@pytest.mark.slow
def test_throughput_end_to_end(
    model_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "throughput.json"
    argv = ["bench", "throughput", "--num-prompts", "4", "--input-len", "8", "--output-len", "4", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "output tok/s" in table and "TTFT (ms)" in table
    report = json.loads(out.read_text())
    assert report["benchmark"] == "throughput" and report["model"]["name"] == "smollm2-135m"
    assert report["config"]["num_prompts"] == 4 and report["config"]["input_len"] == 8
    assert {"cpu", "torch", "date", "load_average"} <= set(report["machine"])
    results = report["results"]
    assert results["num_requests"] == 4
    assert results["prompt_tokens"] == 4 * 8 and results["output_tokens"] == 4 * 4
    assert all(r["prompt_tokens"] == 8 and r["output_tokens"] == 4 for r in results["requests"])
    assert results["output_tokens_per_s"] == pytest.approx(16 / results["elapsed_s"])
    assert results["total_tokens_per_s"] == pytest.approx(48 / results["elapsed_s"])
    assert results["requests_per_s"] > 0
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        _check_summary(results[key], 4)
    _check_summary(results["itl_ms"], 4 * 3)
    assert results["e2e_ms"]["max"] <= results["elapsed_s"] * 1e3 + 1e-6


@pytest.mark.slow
def test_throughput_on_a_dataset(
    model_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "prompts.json"
    dataset.write_text(json.dumps(["The capital of France is Paris, and the capital of Spain is", "Hi"]))
    out = tmp_path / "r.json"
    argv = ["bench", "throughput", "--dataset", str(dataset), "--input-len", "5", "--output-len", "3"]
    assert main([*argv, "--temperature", "0", "--json", str(out)]) == 0
    assert "2 prompts from" in capsys.readouterr().out
    requests = json.loads(out.read_text())["results"]["requests"]
    assert requests[0]["prompt_tokens"] == 5 and 0 < requests[1]["prompt_tokens"] < 5  # cut, and used as is
    assert all(r["output_tokens"] == 3 for r in requests)


@pytest.mark.slow
def test_latency_end_to_end(model_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--batch-size", "2", "--input-len", "8", "--output-len", "4"]
    assert main([*argv, "--num-iters", "2", "--num-iters-warmup", "1", "--json", str(out)]) == 0
    assert "avg latency" in capsys.readouterr().out
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["benchmark"] == "latency" and len(results["latencies_s"]) == 2
    assert results["batch_size"] == 2 and results["output_tokens_per_iteration"] == 2 * 4
    assert results["avg_latency_s"] == pytest.approx(sum(results["latencies_s"]) / 2)
    latency = results["latency_s"]
    assert 0 < latency["min"] <= latency["p10"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
