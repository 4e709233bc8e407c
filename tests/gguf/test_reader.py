"""GGUFFile on valid files: metadata and tensors round-trip, mappings are released, models load and run.

Files come from `gguf.GGUFWriter` (via tests/gguf/factories.py); one test loads the real SmolLM2 twice.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf.gguf_writer import GGUFWriter
from gguf.quants import dequantize as reference_dequantize

from rocmforge.config import ModelConfig
from rocmforge.errors import GGUFError
from rocmforge.gguf.quants import dequantize
from rocmforge.gguf.reader import GGUFFile
from rocmforge.models.loader import load_model, load_model_and_tokenizer
from tests.gguf.factories import (
    EOS_ID,
    HIDDEN,
    VOCAB_SIZE,
    ModelFile,
    Q,
    V,
    pack_array,
    pack_file,
    pack_kv,
    pack_string,
    write_model,
)

# Storage types of the mixed model below; the K-quants need 256-element rows, so that model has ff 256.
MIXED_QTYPES = {
    "token_embd.weight": Q.Q8_0,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q4_1,
    "blk.0.attn_v.weight": Q.Q5_0,
    "blk.0.attn_output.weight": Q.Q5_1,
    "blk.0.ffn_gate.weight": Q.BF16,
    "blk.0.ffn_up.weight": Q.F32,
    "blk.0.ffn_down.weight": Q.Q4_K,
    "blk.1.ffn_down.weight": Q.Q6_K,
    "blk.1.attn_q.weight": Q.F16,
}
MIXED_KQUANTS = {"blk.1.attn_k.weight": Q.Q8_0, "output.weight": Q.Q8_0}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """The default tiny model: F16 matrices, F32 norms, Q8_0 embeddings."""
    return write_model(tmp_path_factory.mktemp("model") / "tiny.gguf", qtypes={"token_embd.weight": Q.Q8_0})


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """A model with a different storage type almost everywhere, untied output, 64-byte alignment."""
    return write_model(
        tmp_path_factory.mktemp("mixed") / "mixed.gguf",
        ff=256,
        tied=False,
        qtypes=MIXED_QTYPES | MIXED_KQUANTS,
        alignment=64,
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


# -- tensors ------------------------------------------------------------------------------------------------


def test_tensor_directory_and_bytes(mixed_file: ModelFile) -> None:
    with GGUFFile(mixed_file.path) as f:
        assert f.version == 3
        assert f.alignment == 64
        assert f.data_offset % 64 == 0
        assert set(f.tensors) == set(mixed_file.tensors)
        for name, (data, qtype) in mixed_file.tensors.items():
            info = f.tensor_info(name)
            assert info.qtype == qtype, name
            assert (info.offset - f.data_offset) % 64 == 0, name
            assert info.n_bytes == data.nbytes, name
            raw = f.raw_tensor(name)
            # Byte-for-byte what the writer got, in (rows, bytes per row) form.
            assert raw.tobytes() == data.tobytes(), name
            assert raw.shape[0] == (math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1)
            del raw


def test_shapes_are_in_torch_order(mixed_file: ModelFile) -> None:
    with GGUFFile(mixed_file.path) as f:
        assert f.tensors["token_embd.weight"].shape == (VOCAB_SIZE, HIDDEN)
        assert f.tensors["blk.0.ffn_down.weight"].shape == (HIDDEN, 256)
        assert f.tensors["output_norm.weight"].shape == (HIDDEN,)
        assert f.tensors["blk.0.ffn_up.weight"].n_elements == 256 * HIDDEN


def test_dequantized_tensors_match_gguf_py(mixed_file: ModelFile) -> None:
    with GGUFFile(mixed_file.path) as f:
        for name, (data, qtype) in mixed_file.tensors.items():
            info = f.tensors[name]
            ours = dequantize(f.raw_tensor(name), info.qtype, info.shape)
            expected = reference_dequantize(data, qtype) if qtype not in (Q.F32, Q.F16) else data
            torch.testing.assert_close(ours, torch.from_numpy(np.asarray(expected, dtype=np.float32)), rtol=0, atol=0)


# -- metadata -----------------------------------------------------------------------------------------------

SCALARS: dict[str, tuple[Any, V]] = {
    "t.u8": (255, V.UINT8),
    "t.i8": (-128, V.INT8),
    "t.u16": (65535, V.UINT16),
    "t.i16": (-32768, V.INT16),
    "t.u32": (2**32 - 1, V.UINT32),
    "t.i32": (-(2**31), V.INT32),
    "t.u64": (2**64 - 1, V.UINT64),
    "t.i64": (-(2**63), V.INT64),
    "t.f32": (0.15625, V.FLOAT32),  # exactly representable, so it round-trips exactly
    "t.f64": (1e300, V.FLOAT64),
    "t.bool_true": (True, V.BOOL),
    "t.bool_false": (False, V.BOOL),
    "t.str": ("héllo ✓ 😀", V.STRING),
    "t.empty_str": ("", V.STRING),
}
ARRAYS: dict[str, tuple[list[Any], V]] = {
    "t.a_u8": ([0, 1, 255], V.UINT8),
    "t.a_i16": ([-5, 7], V.INT16),
    "t.a_u64": ([2**64 - 1, 0], V.UINT64),
    "t.a_i64": ([-(2**63), 2**63 - 1], V.INT64),
    "t.a_f32": ([0.5, -2.0, 0.125], V.FLOAT32),  # exact in float32
    "t.a_f64": ([math.pi, -0.0], V.FLOAT64),
    "t.a_bool": ([True, False, True], V.BOOL),
    "t.a_str": (["a", "", "ünïcødé", "with space"], V.STRING),
}


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "meta.gguf"
    nested = [[1, 2], [3], [4, 5, 6]]
    deeper = [[["x", "y"]], [["z"]]]
    # add_key_value with explicit sub-types: add_array would infer INT32/FLOAT32 items from Python values.
    writer = GGUFWriter(path, "llama")
    for key, (value, vtype) in SCALARS.items():
        writer.add_key_value(key, value, vtype)
    for key, (values, item_type) in ARRAYS.items():
        writer.add_key_value(key, values, V.ARRAY, sub_type=item_type)
    writer.add_array("t.nested", nested)
    writer.add_array("t.deeper", deeper)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with GGUFFile(path) as f:
        assert f.tensors == {}
        assert f.metadata["general.architecture"] == "llama"
        for key, (value, _vtype) in SCALARS.items():
            got = f.metadata[key]
            assert got == value and type(got) is type(value), (key, got)
        for key, (values, item_type) in ARRAYS.items():
            got = f.metadata[key]
            assert isinstance(got, list) and got == values, (key, got)
            kind = bool if item_type == V.BOOL else str if item_type == V.STRING else type(values[0])
            assert all(type(v) is kind for v in got), key
        assert f.metadata["t.nested"] == nested
        assert f.metadata["t.deeper"] == deeper
        assert math.copysign(1.0, f.metadata["t.a_f64"][1]) == -1.0  # -0.0 kept


def test_hand_packed_values(tmp_path: Path) -> None:
    # What GGUFWriter cannot write: empty arrays, an array of empty arrays, a non-zero byte as BOOL.
    kvs = [
        pack_kv("empty", V.ARRAY, pack_array(V.UINT32, 0, b"")),
        pack_kv("empty_strs", V.ARRAY, pack_array(V.STRING, 0, b"")),
        pack_kv("empties", V.ARRAY, pack_array(V.ARRAY, 2, pack_array(V.INT8, 0, b"") * 2)),
        pack_kv("flag", V.BOOL, b"\x02"),
        pack_kv("s", V.STRING, pack_string("x" * 1000)),
        pack_kv("i8s", V.ARRAY, pack_array(V.INT8, 3, struct.pack("<3b", -1, 0, 1))),
    ]
    path = tmp_path / "packed.gguf"
    path.write_bytes(pack_file(kvs, version=2))
    with GGUFFile(path) as f:
        assert f.version == 2
        assert f.metadata == {
            "empty": [],
            "empty_strs": [],
            "empties": [[], []],
            "flag": True,
            "s": "x" * 1000,
            "i8s": [-1, 0, 1],
        }
        assert f.alignment == 32 and f.tensors == {}


def test_require_and_architecture(model_file: ModelFile) -> None:
    with GGUFFile(model_file.path) as f:
        assert f.architecture == "llama"
        assert f.require("llama.block_count") == 2
        with pytest.raises(GGUFError, match=r"missing metadata key 'nope'") as info:
            f.require("nope")
        assert str(model_file.path) in str(info.value)
        with pytest.raises(GGUFError, match=r"missing tensor 'nope.weight'"):
            f.tensor_info("nope.weight")


# -- lifetime: close, context manager, mappings and descriptors --------------------------------------------


def test_close_is_idempotent(model_file: ModelFile) -> None:
    f = GGUFFile(model_file.path)
    assert not f.closed and "20 tensors" in repr(f)
    f.close()
    f.close()
    assert f.closed and "closed" in repr(f)
    # Metadata stays readable after close; tensor data does not.
    assert f.metadata["general.name"] == "tiny-test"
    with pytest.raises(GGUFError, match="closed"):
        f.raw_tensor("output_norm.weight")
    with f:  # entering and leaving a closed file is harmless too
        pass


def test_context_manager_unmaps_and_closes_descriptors(model_file: ModelFile) -> None:
    fds = open_fds()
    assert not mapped(model_file.path)
    with GGUFFile(model_file.path) as f:
        assert mapped(model_file.path)
        view = f.raw_tensor("blk.0.attn_norm.weight")
        assert view.size > 0
        del view
    assert f.closed
    assert not mapped(model_file.path)
    assert open_fds() == fds


def test_close_with_live_view_fails_loudly_then_works(model_file: ModelFile) -> None:
    f = GGUFFile(model_file.path)
    view = f.raw_tensor("token_embd.weight")
    with pytest.raises(GGUFError, match="still referenced"):
        f.close()
    assert not f.closed
    assert f.raw_tensor("token_embd.weight").tobytes() == view.tobytes()
    del view
    f.close()
    assert not mapped(model_file.path)


def test_exception_inside_with_is_not_masked_by_live_views(model_file: ModelFile) -> None:
    # The error raised inside the block must propagate, not "cannot unmap" from __exit__.
    fds = open_fds()
    with pytest.raises(KeyError, match="boom"), GGUFFile(model_file.path) as f:
        view = f.raw_tensor("token_embd.weight")
        raise KeyError("boom", view.shape)
    assert f.closed
    del view
    assert not mapped(model_file.path)
    assert open_fds() == fds


def test_failed_open_releases_everything(tmp_path: Path, model_file: ModelFile) -> None:
    data = bytearray(model_file.path.read_bytes())
    data[-1000:] = b""  # the last tensor now runs past the end
    path = tmp_path / "cut.gguf"
    path.write_bytes(bytes(data))
    fds = open_fds()
    for _ in range(3):
        with pytest.raises(GGUFError, match="runs past the end"):
            GGUFFile(path)
    assert not mapped(path)
    assert open_fds() == fds


def test_two_files_side_by_side_and_in_turn(model_file: ModelFile) -> None:
    fds = open_fds()
    with GGUFFile(model_file.path) as a, GGUFFile(model_file.path) as b:
        assert a.metadata == b.metadata
        assert a.tensors == b.tensors
        a_view = a.raw_tensor("blk.1.ffn_up.weight")
        assert a_view.tobytes() == b.raw_tensor("blk.1.ffn_up.weight").tobytes()
        del a_view
        a.close()
        # Closing one leaves the other's mapping intact.
        assert b.raw_tensor("output_norm.weight").tobytes() == model_file.tensors["output_norm.weight"][0].tobytes()
    for _ in range(3):
        with GGUFFile(model_file.path) as c:
            assert c.tensors["token_embd.weight"].qtype == Q.Q8_0
    assert not mapped(model_file.path)
    assert open_fds() == fds


# -- models -------------------------------------------------------------------------------------------------


def run(model: Any, tokens: list[int]) -> torch.Tensor:
    return model.forward(torch.tensor(tokens), 0, model.new_kv_cache(16))


def test_synthetic_model_loads_and_runs(model_file: ModelFile) -> None:
    fds = open_fds()
    model, tokenizer = load_model_and_tokenizer(model_file.path)
    assert not mapped(model_file.path) and open_fds() == fds
    config = model.config
    assert (config.arch, config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (
        "llama",
        2,
        HIDDEN,
        4,
        2,
    )
    assert config.tie_word_embeddings and config.vocab_size == VOCAB_SIZE
    logits = run(model, [1, 2, 3])
    assert logits.shape == (1, VOCAB_SIZE) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # The tokenizer uses the merges: " the" is one token; the control token is the EOS.
    ids = tokenizer.encode("hello the", add_special=False)
    assert tokenizer.token_to_id("Ġthe") in ids
    assert tokenizer.decode(ids) == "hello the"
    assert tokenizer.eos_token_id == EOS_ID


def test_mixed_quant_model_loads_and_matches_reference_weights(mixed_file: ModelFile) -> None:
    model, _ = load_model_and_tokenizer(mixed_file.path)
    assert not model.config.tie_word_embeddings
    weights = model.weights
    expected = {
        "blk.0.ffn_down.weight": weights.layers[0].down_proj.weight,
        "blk.1.ffn_down.weight": weights.layers[1].down_proj.weight,
        "blk.0.attn_k.weight": weights.layers[0].k_proj.weight,
        "output.weight": weights.lm_head.weight,
    }
    for name, loaded in expected.items():
        data, qtype = mixed_file.tensors[name]
        reference = torch.from_numpy(np.asarray(reference_dequantize(data, qtype), dtype=np.float32))
        torch.testing.assert_close(loaded, reference, rtol=0, atol=0)
    logits = run(model, [5, 6, 7, 8])
    assert logits.shape == (1, VOCAB_SIZE) and torch.isfinite(logits).all()


def test_two_synthetic_models_side_by_side_and_in_turn(model_file: ModelFile) -> None:
    first = load_model(model_file.path)
    second = load_model(model_file.path)
    a, b = run(first, [1, 2, 3]), run(second, [1, 2, 3])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Weights are independent copies, not views of a (now closed) mapping.
    assert first.weights.embed_tokens.data_ptr() != second.weights.embed_tokens.data_ptr()
    del first, second
    third = load_model(model_file.path)
    torch.testing.assert_close(run(third, [1, 2, 3]), a, rtol=0, atol=0)
    assert not mapped(model_file.path)


def test_config_from_synthetic_model(model_file: ModelFile) -> None:
    with GGUFFile(model_file.path) as f:
        config = ModelConfig.from_gguf(f)
    assert config.head_dim == HIDDEN // 4 and config.rope_dim == HIDDEN // 4
    assert config.intermediate_size == 128 and config.context_length == 256


@pytest.mark.slow
def test_two_real_models_side_by_side(model_paths: dict[str, Path]) -> None:
    path = model_paths["smollm2-135m"]
    fds = open_fds()
    first = load_model(path)
    second = load_model(path)
    assert not mapped(path) and open_fds() == fds
    tokens = [1, 2, 3, 504, 3287]
    a, b = run(first, tokens), run(second, tokens)
    assert a.shape == (1, 49152) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
