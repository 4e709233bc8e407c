"""The `rocmforge` command as a user runs it: a real subprocess, real models, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "rocmforge"]


def run(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rocmforge: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", [[], ["generate"], ["inspect"], ["pull"], ["models"]])
def test_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "usage: rocmforge" in result.stdout


def test_generate_greedy_is_deterministic_and_reports_speed(model_paths: dict[str, Path]) -> None:
    args = ("generate", "The capital of France is", "--temperature", "0", "-n", "8", "--model", "smollm2-135m")
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    assert "tok/s" in first.stderr and "8 generated" in first.stderr


def test_generate_reads_prompt_from_stdin(model_paths: dict[str, Path]) -> None:
    from_stdin = run("generate", "--temperature", "0", "-n", "6", "-q", stdin="Once upon a time")
    from_argument = run("generate", "Once upon a time", "--temperature", "0", "-n", "6", "-q")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_argument.stdout and from_stdin.stdout.strip()
    assert from_stdin.stderr == ""  # --quiet: no progress bar, no speed line


def test_generate_accepts_a_gguf_path(model_paths: dict[str, Path]) -> None:
    by_path = run("generate", "Hi", "--model", str(model_paths["smollm2-135m"]), "-n", "4", "--seed", "7", "-q")
    by_name = run("generate", "Hi", "--model", "smollm2-135m", "-n", "4", "--seed", "7", "-q")
    assert by_path.returncode == 0, by_path.stderr
    assert by_path.stdout == by_name.stdout


def test_user_mistakes_give_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run("generate", "hi", "--model", "no-such-model"), "no-such-model", "smollm2-135m")
    assert_one_line_error(run("generate", "hi", "--temperature", "-1"), "temperature")
    assert_one_line_error(run("generate", "hi", "--top-p", "0"), "top_p")
    assert_one_line_error(run("pull", "no-such-model"), "no-such-model")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a model at all")
    assert_one_line_error(run("inspect", str(garbage)), str(garbage), "magic")
    assert_one_line_error(run("generate", "hi", "--model", str(garbage)), str(garbage))
    empty_stdin = run("generate", stdin="")
    assert_one_line_error(empty_stdin, "empty")


def test_argument_errors_exit_2_without_traceback() -> None:
    result = run("generate", "hi", "--max-tokens", "many")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--max-tokens" in result.stderr


def test_inspect_json_lists_every_tensor(model_paths: dict[str, Path]) -> None:
    result = run("inspect", "smollm2-135m", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["version"] == 3 and doc["tensor_count"] == len(doc["tensors"]) == 272
    assert doc["config"]["arch"] == "llama" and doc["config"]["num_layers"] == 30
    embed = next(t for t in doc["tensors"] if t["name"] == "token_embd.weight")
    assert embed == {
        "name": "token_embd.weight",
        "type": "Q8_0",
        "shape": [49152, 576],
        "bytes": 49152 * 576 // 32 * 34,
    }
    assert doc["metadata"]["tokenizer.ggml.tokens"].startswith("[49152 items")


def test_inspect_table(model_paths: dict[str, Path]) -> None:
    result = run("inspect", "gemma3-270m")
    assert result.returncode == 0, result.stderr
    assert "sliding_window = 512" in result.stdout
    assert "blk.0.attn_q_norm.weight" in result.stdout


def test_models_lists_named_models(model_paths: dict[str, Path]) -> None:
    result = run("models")
    assert result.returncode == 0
    for name, path in model_paths.items():
        assert name in result.stdout and str(path) in result.stdout
    assert "(default)" in result.stdout


def test_ctrl_c_stops_generation_cleanly(model_paths: dict[str, Path]) -> None:
    process = subprocess.Popen(
        [*COMMAND, "generate", "Count to a thousand:", "-n", "100000", "--ignore-eos", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    # Wait for real output, so that the signal lands during decoding rather than during start-up.
    process.stdout.read(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
