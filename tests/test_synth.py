"""`rocmforge synth`: presets, quant mixes, random blocks, the streaming writer, and the files in both loaders."""

from __future__ import annotations

import dataclasses
import re
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as reference_dequantize

from rocmforge.cli.main import main
from rocmforge.gguf.quants import dequantize
from rocmforge.gguf.reader import GGUFFile
from rocmforge.hub import resolve_model
from rocmforge.layers.norm import add_rms_norm, rms_norm
from rocmforge.models import decoder
from rocmforge.models.loader import load_model_and_tokenizer
from rocmforge.synth import (
    PRESETS,
    QUANT_SCHEMES,
    Preset,
    SynthError,
    get_preset,
    get_scheme,
    plan_tensors,
    presets,
    write_synthetic_model,
)
from rocmforge.synth import tensors as synth_tensors
from rocmforge.synth.mixes import TensorSpec, use_more_bits
from rocmforge.synth.tensors import BLOCK_LAYOUTS, WEIGHT_STD, random_blocks, tensor_chunks
from rocmforge.synth.writer import _metadata_types
from tests.gguf.factories import write_model

Q = GGMLQuantizationType
TINY_LLAMA = get_preset("llama", "tiny")
TINY_QWEN2 = get_preset("qwen2", "tiny")


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF whose tokenizer has 261 tokens: keeps the embedding of test models small."""
    return write_model(tmp_path_factory.mktemp("vocab") / "vocab.gguf").path


def _forward(path: Path, token_ids: list[int]) -> torch.Tensor:
    model, _ = load_model_and_tokenizer(path)
    return model.forward(torch.tensor(token_ids), 0, model.new_kv_cache(64), all_logits=True)


def _file_types(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with GGUFFile(path) as f:
        return {t.name: (t.qtype.name, t.shape) for t in f.tensors.values()}


# -- presets ---------------------------------------------------------------------------------------------------


def test_presets_have_the_real_shapes() -> None:
    def shape(p: Preset) -> tuple[object, ...]:
        return (p.hidden, p.intermediate, p.layers, p.heads, p.kv_heads, p.head_dim, p.rope_theta, p.tied_embeddings)

    assert shape(PRESETS["llama"]["7b"]) == (4096, 11008, 32, 32, 32, 128, 10_000.0, False)
    assert shape(PRESETS["llama"]["8b"]) == (4096, 14336, 32, 32, 8, 128, 500_000.0, False)
    assert shape(PRESETS["qwen2"]["0.5b"]) == (896, 4864, 24, 14, 2, 64, 1e6, True)
    assert shape(PRESETS["qwen2"]["1.5b"]) == (1536, 8960, 28, 12, 2, 128, 1e6, True)
    assert shape(PRESETS["qwen2"]["7b"]) == (3584, 18944, 28, 28, 4, 128, 1e6, False)
    assert all(p.qkv_bias and p.rms_eps == 1e-6 for p in PRESETS["qwen2"].values())
    assert not any(p.qkv_bias for p in PRESETS["llama"].values())
    # Parameter counts of the real models (their own vocabularies): 6.74B, 8.03B, 0.49B, 1.54B, 7.62B.
    expected = {("llama", "7b"): 6.74e9, ("llama", "8b"): 8.03e9, ("qwen2", "0.5b"): 0.494e9}
    expected |= {("qwen2", "1.5b"): 1.54e9, ("qwen2", "7b"): 7.62e9}
    for (arch, name), count in expected.items():
        p = PRESETS[arch][name]
        assert p.parameter_count(p.reference_vocab) == pytest.approx(count, rel=0.005), (arch, name)


def test_docstring_table_lists_every_public_preset() -> None:
    doc = presets.__doc__ or ""
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in doc.splitlines() if re.match(r"\| \w+ +\| \d", line)
    ]
    assert len(rows) == sum(len(presets.public_preset_names(a)) for a in PRESETS)
    for arch, name, reference, hidden, ffn, layers, heads_kv, head, ctx, theta, tied, vocab in rows:
        p = PRESETS[arch][name]
        assert (p.reference, p.hidden, p.intermediate, p.layers) == (reference, int(hidden), int(ffn), int(layers))
        assert (f"{p.heads}/{p.kv_heads}", p.head_dim, p.context_length) == (heads_kv, int(head), int(ctx))
        assert (p.rope_theta, p.tied_embeddings, p.reference_vocab) == (float(theta), tied == "yes", int(vocab))


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(SynthError, match=r"unknown llama preset '3b'; choose from 0\.5b, 1\.5b, 7b, 8b$"):
        get_preset("llama", "3b")
    with pytest.raises(SynthError, match="unknown architecture 'gemma3'; choose from llama, qwen2"):
        get_preset("gemma3", "7b")
    with pytest.raises(SynthError, match="unknown quant type 'q9_k'; choose from f32, f16, bf16, q8_0"):
        get_scheme("q9_k")
    assert get_preset("LLaMA", "7B") is PRESETS["llama"]["7b"]


# -- quant mixes -----------------------------------------------------------------------------------------------


def test_q4_k_m_matches_llama_cpp_on_a_real_file() -> None:
    """The Q4_K_M Qwen2.5-Coder-0.5B that llama.cpp quantized: same names, shapes and types, tensor for tensor.

    One difference is known: the llama.cpp that made this file counted layers in name order (blk.0, blk.1, blk.10,
    blk.11, ...) when choosing which attn_v / ffn_down get Q6_K; llama.cpp now sorts them by layer number
    (`weight_name_comparer`), which synth follows. Under the old order the plans agree exactly.
    """
    real = _file_types(resolve_model("qwen2.5-coder-0.5b"))
    # That export keeps a separate output matrix, unlike Qwen2.5-0.5B itself.
    preset = dataclasses.replace(PRESETS["qwen2"]["0.5b"], tied_embeddings=False)
    planned = {s.name: (s.qtype.name, s.shape) for s in plan_tensors(preset, 151936, get_scheme("q4_k_m"))}
    n = preset.layers
    name_order = sorted(range(n), key=str)
    for layer in range(n):
        more = use_more_bits(name_order.index(layer), n)
        for name, (more_type, base_type) in {"attn_v": ("Q8_0", "Q5_0"), "ffn_down": ("Q6_K", "Q4_K")}.items():
            key = f"blk.{layer}.{name}.weight"
            planned[key] = (more_type if more else base_type, planned[key][1])
    assert planned == real
    counts = Counter(t for t, _ in real.values())
    assert counts == Counter(s.qtype.name for s in plan_tensors(preset, 151936, get_scheme("q4_k_m")))


def test_q4_k_m_on_llama_2_7b_follows_use_more_bits() -> None:
    specs = {s.name: s.qtype for s in plan_tensors(PRESETS["llama"]["7b"], 32000, get_scheme("q4_k_m"))}
    more = [i for i in range(32) if use_more_bits(i, 32)]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for i in range(32):
        expected = Q.Q6_K if i in more else Q.Q4_K
        assert specs[f"blk.{i}.attn_v.weight"] == specs[f"blk.{i}.ffn_down.weight"] == expected
        assert specs[f"blk.{i}.attn_q.weight"] == specs[f"blk.{i}.ffn_up.weight"] == Q.Q4_K
        assert specs[f"blk.{i}.attn_norm.weight"] == Q.F32
    assert (specs["token_embd.weight"], specs["output.weight"]) == (Q.Q4_K, Q.Q6_K)
    # Tied models quantize the embedding as the output.
    tied = {s.name: s.qtype for s in plan_tensors(PRESETS["qwen2"]["1.5b"], 151936, get_scheme("q4_k_m"))}
    assert tied["token_embd.weight"] == Q.Q6_K and "output.weight" not in tied


def test_single_types_are_pure_with_llama_cpp_fallbacks() -> None:
    qwen = PRESETS["qwen2"]["0.5b"]  # hidden 896: not a multiple of 256; ffn 4864 is
    for quant, fallback in (("q2_k", Q.Q4_0), ("q3_k", Q.Q4_0), ("q4_k", Q.Q5_0), ("q5_k", Q.Q5_1), ("q6_k", Q.Q8_0)):
        specs = {s.name: s.qtype for s in plan_tensors(qwen, 151936, get_scheme(quant))}
        base = get_scheme(quant).base
        assert specs["blk.0.attn_q.weight"] == specs["token_embd.weight"] == fallback, quant
        assert specs["blk.0.ffn_down.weight"] == base, quant
    for quant in ("f16", "q8_0", "q4_0", "q5_1"):
        matrices = {s.qtype for s in plan_tensors(qwen, 151936, get_scheme(quant)) if s.role == "matrix"}
        assert matrices == {get_scheme(quant).base}


# -- random tensors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", sorted(BLOCK_LAYOUTS, key=lambda t: t.value), ids=lambda t: t.name)
def test_random_blocks_are_valid_with_a_trained_models_spread(qtype: GGMLQuantizationType) -> None:
    block_size = GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(np.random.default_rng(0), qtype, 4096).reshape(16, -1)
    ours = dequantize(blocks, qtype, (16, 256 * block_size)).numpy()
    # gguf-py's reference dequantizer reads the same values: the blocks are valid ggml data.
    np.testing.assert_array_equal(ours, reference_dequantize(blocks, qtype))
    assert np.isfinite(ours).all()
    assert abs(float(ours.mean())) < 0.02 * WEIGHT_STD
    assert float(ours.std()) == pytest.approx(WEIGHT_STD, rel=0.03)
    # Every block has its own scale: a kernel that reads the wrong block's scale cannot go unnoticed.
    offset = BLOCK_LAYOUTS[qtype].d_offset
    scales = blocks.reshape(4096, -1)[:, offset : offset + 2].copy().view(np.float16)
    assert len(np.unique(scales)) > 100


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda t: t.name)
def test_float_matrices_norms_and_biases(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(0)
    matrix = b"".join(c.tobytes() for c in tensor_chunks(TensorSpec("w", (64, 1024), qtype, "matrix"), rng, 4096))
    values = dequantize(np.frombuffer(matrix, np.uint8), qtype, (64, 1024)).numpy()
    assert float(values.std()) == pytest.approx(WEIGHT_STD, rel=0.03) and abs(float(values.mean())) < 1e-3
    norm = next(tensor_chunks(TensorSpec("n", (4096,), Q.F32, "norm"), rng)).view(np.float32)
    assert norm.min() >= 0.95 and norm.max() <= 1.05
    bias = next(tensor_chunks(TensorSpec("b", (4096,), Q.F32, "bias"), rng)).view(np.float32)
    assert float(bias.std()) == pytest.approx(WEIGHT_STD, rel=0.05)


def test_bf16_rounds_to_nearest_even() -> None:
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    ours = synth_tensors._to_bf16(values)
    np.testing.assert_array_equal(
        ours, torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    )


# -- the writer ------------------------------------------------------------------------------------------------


def test_same_seed_same_file_other_seed_other_weights(tmp_path: Path, small_vocab: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    write_synthetic_model(a, TINY_LLAMA, "q4_k_m", tokenizer_from=small_vocab, seed=3)
    write_synthetic_model(b, TINY_LLAMA, "q4_k_m", tokenizer_from=small_vocab, seed=3)
    write_synthetic_model(c, TINY_LLAMA, "q4_k_m", tokenizer_from=small_vocab, seed=4)
    assert a.read_bytes() == b.read_bytes()
    with GGUFFile(a) as fa, GGUFFile(c) as fc:
        assert fa.metadata | {"general.description": ""} == fc.metadata | {"general.description": ""}
        assert not np.array_equal(fa.raw_tensor("blk.0.attn_q.weight"), fc.raw_tensor("blk.0.attn_q.weight"))


def test_tokenizer_keys_are_copied_with_their_types(tmp_path: Path) -> None:
    source = resolve_model("smollm2-135m")
    out = tmp_path / "m.gguf"
    result = write_synthetic_model(out, TINY_LLAMA, "q8_0")  # the default tokenizer of llama
    with GGUFFile(source) as src, GGUFFile(out) as dst:
        keys = {k for k in src.metadata if k.startswith("tokenizer.")}
        assert len(keys) >= 10 and {k for k in dst.metadata if k.startswith("tokenizer.")} == keys
        assert all(src.metadata[k] == dst.metadata[k] for k in keys)
        assert dst.metadata["llama.vocab_size"] == result.vocab_size == len(src.metadata["tokenizer.ggml.tokens"])
        assert dst.metadata["general.file_type"] == 7 and "random weights" in dst.metadata["general.description"]
    assert _metadata_types(source, keys) == _metadata_types(out, keys)


@pytest.mark.parametrize("quant", list(QUANT_SCHEMES))
def test_every_quant_type_loads_in_rocmforge(tmp_path: Path, small_vocab: Path, quant: str) -> None:
    out = tmp_path / f"{quant}.gguf"
    result = write_synthetic_model(out, TINY_LLAMA, quant, tokenizer_from=small_vocab)
    planned = {s.name: (s.qtype.name, s.shape) for s in plan_tensors(TINY_LLAMA, 261, get_scheme(quant))}
    assert _file_types(out) == planned
    assert result.type_counts == dict(Counter(t for t, _ in planned.values()))
    logits = _forward(out, [5, 70, 100, 200])
    assert logits.shape == (4, 261) and torch.isfinite(logits).all()
    # Hidden states are RMS-normalised before the output matrix: logits spread ~ WEIGHT_STD * sqrt(hidden).
    assert 0.5 < float(logits.std()) / (WEIGHT_STD * TINY_LLAMA.hidden**0.5) < 2


def test_activations_stay_sane_through_32_layers(
    tmp_path: Path, small_vocab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = dataclasses.replace(TINY_LLAMA, layers=32)
    out = tmp_path / "deep.gguf"
    write_synthetic_model(out, deep, "q4_k_m", tokenizer_from=small_vocab)
    model, _ = load_model_and_tokenizer(out)
    # Every RMS norm sees the residual stream (and the final norm its last state): record its size.
    streams: list[torch.Tensor] = []

    def recording_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        streams.append(x.detach().clone())
        return rms_norm(x, weight, eps)

    def recording_add_rms_norm(
        delta: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, stream = add_rms_norm(delta, residual, weight, eps)
        streams.append(stream.detach().clone())
        return normed, stream

    # The first norm sees the embeddings; every later one is fused with the residual add that feeds it.
    monkeypatch.setattr(decoder, "rms_norm", recording_rms_norm)
    monkeypatch.setattr(decoder, "add_rms_norm", recording_add_rms_norm)
    logits = model.forward(torch.arange(5, 200, 12), 0, model.new_kv_cache(64), all_logits=True)
    assert len(streams) == 2 * deep.layers + 1
    sizes = [float(h.pow(2).mean().sqrt()) for h in streams]
    # Embeddings start at WEIGHT_STD; each layer adds O(WEIGHT_STD * sqrt(width)): growth ~ sqrt(layers), no more.
    assert sizes[0] == pytest.approx(WEIGHT_STD, rel=0.2)
    assert all(0.01 < size < 2.0 for size in sizes), sizes
    assert torch.isfinite(logits).all()
    assert 0.5 < float(logits.std()) / (WEIGHT_STD * deep.hidden**0.5) < 2
    # At width 256 random queries and keys attend almost uniformly, so positions drift together (the rank collapse
    # of random transformers; at width 2048 they stay far apart), yet they must not become one.
    last = torch.nn.functional.normalize(streams[-1], dim=-1)
    assert float((last @ last.T).min()) < 0.99
    assert len(set(logits.argmax(-1).tolist())) >= 2


def test_memory_stays_at_a_few_chunks(tmp_path: Path, small_vocab: Path) -> None:
    wide = dataclasses.replace(TINY_LLAMA, name="wide", hidden=512, intermediate=8192, layers=1)
    largest = 8192 * 512 * 4  # one f32 FFN matrix: 16 MiB
    tracemalloc.start()
    try:
        write_synthetic_model(tmp_path / "w.gguf", wide, "f32", tokenizer_from=small_vocab, chunk_bytes=256 << 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < largest / 8, f"peak {peak / 2**20:.1f} MiB"


def test_an_interrupted_write_leaves_no_file(
    tmp_path: Path, small_vocab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> Iterator[np.ndarray]:
        yield np.zeros(16, np.uint8)
        raise KeyboardInterrupt

    monkeypatch.setattr("rocmforge.synth.writer.tensor_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_model(tmp_path / "m.gguf", TINY_LLAMA, "f16", tokenizer_from=small_vocab)
    assert list(tmp_path.iterdir()) == []


# -- llama.cpp -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "quant"),
    [(TINY_LLAMA, "f16"), (TINY_LLAMA, "q8_0"), (TINY_LLAMA, "q4_k_m"), (TINY_QWEN2, "q4_k_m")],
    ids=["llama-f16", "llama-q8_0", "llama-q4_k_m", "qwen2-q4_k_m"],
)
def test_llama_cpp_reads_the_same_model(tmp_path: Path, preset: Preset, quant: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the test oracle (pip install .[test])")
    out = tmp_path / "m.gguf"
    write_synthetic_model(out, preset, quant)  # with the architecture's default (real) tokenizer
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=2, logits_all=True, verbose=False, seed=0)
    try:
        token_ids = llm.tokenize(b"Hello world, this is a test", add_bos=False, special=True)
        llm.eval(token_ids)
        theirs = torch.from_numpy(np.array(llm.scores[: len(token_ids)], dtype=np.float32))
    finally:
        llm.close()
    ours = _forward(out, token_ids)
    assert torch.isfinite(theirs).all()
    # llama.cpp quantizes activations to 8 bits inside its dot products: close, not equal.
    assert float(torch.corrcoef(torch.stack([theirs.flatten(), ours.flatten()]))[0, 1]) > 0.999
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))


@pytest.mark.slow
def test_qwen2_0_5b_q4_k_m_is_the_size_of_the_real_one(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the test oracle (pip install .[test])")
    out = tmp_path / "qwen2-0.5b-q4_k_m.gguf"
    result = write_synthetic_model(out, PRESETS["qwen2"]["0.5b"], "q4_k_m")
    # Qwen2.5-0.5B-Instruct-Q4_K_M.gguf is 398 MB (tied Q8_0 embedding, Q5_0 / Q4_K / Q6_K / Q8_0 blocks).
    assert 0.38e9 < result.n_bytes < 0.45e9, result.summary()
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=False, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    try:
        token_ids = llm.tokenize(b"def fibonacci(n):", add_bos=False, special=True)
        llm.eval(token_ids)
        logits = np.array(llm.scores[: len(token_ids)])
    finally:
        llm.close()
    assert np.isfinite(logits).all()
    # Final norm, then a tied Q8_0 embedding of spread WEIGHT_STD: logits spread ~ WEIGHT_STD * sqrt(hidden).
    assert 0.5 < float(logits.std()) / (WEIGHT_STD * 896**0.5) < 2


# -- the command -----------------------------------------------------------------------------------------------


def test_command_writes_the_file(tmp_path: Path, small_vocab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.gguf"
    args = ["synth", "--arch", "qwen2", "--preset", "tiny", "--quant", "q5_k_m", "--tokenizer-from", str(small_vocab)]
    assert main([*args, str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    first = out.read_bytes()
    assert main([*args, "--force", "-q", str(out)]) == 0
    assert capsys.readouterr().out == "" and out.read_bytes() == first


def test_help_lists_the_public_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "llama: 0.5b, 1.5b, 7b, 8b; qwen2: 0.5b, 1.5b, 7b" in text and "tiny" not in text
    assert "q4_k_m" in text and "--tokenizer-from" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--arch", "mistral", "--preset", "7b"], "unknown architecture 'mistral'"),
        (["--arch", "llama", "--preset", "13b"], "unknown llama preset '13b'; choose from 0.5b, 1.5b, 7b, 8b"),
        (["--arch", "llama", "--preset", "7b", "--quant", "q4_k_x"], "unknown quant type 'q4_k_x'"),
        (["--arch", "llama", "--preset", "tiny", "--tokenizer-from", "/nonexistent/t.gguf"], "no such file"),
        (["--arch", "llama", "--preset", "tiny", "--seed", "-1"], "--seed must be a non-negative integer"),
    ],
)
def test_mistakes_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert main(["synth", *args, str(tmp_path / "m.gguf")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rocmforge: error: ") and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_output_path_mistakes(tmp_path: Path, small_vocab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = ["synth", "--arch", "llama", "--preset", "tiny", "-q"]
    base = [*command, "--tokenizer-from", str(small_vocab)]
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep me")
    no_tokenizer = write_model(tmp_path / "bare.gguf", drop_keys=["tokenizer.ggml.tokens"]).path
    cases = [
        (tmp_path / "missing" / "m.gguf", "directory", base),
        (tmp_path / "m.bin", "must end in .gguf", base),
        (existing, "already exists (pass --force", base),
        (small_vocab, "cannot be the tokenizer source", [*base, "--force"]),
        (tmp_path / "n.gguf", "has no tokenizer", [*command, "--tokenizer-from", str(no_tokenizer)]),
    ]
    for out, fragment, args in cases:
        assert main([*args, str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (out, err)
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.gguf", "exists.gguf"]
