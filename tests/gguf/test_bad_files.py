"""Malformed GGUF files: every fault raises GGUFError (or UnsupportedModelError) naming the file and the fault.

Faults are made by byte-editing a valid file written by `gguf.GGUFWriter` at offsets found by the independent
`factories.scan_header`, or by packing headers by hand where the writer refuses to produce them. Nothing here
may crash with another exception, hang, or allocate in proportion to a corrupt count: the fuzz tests at the
end enforce that under a per-example alarm.
"""

from __future__ import annotations

import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rocmforge.config import SUPPORTED_ARCHITECTURES, ModelConfig
from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.reader import MAX_ARRAY_DEPTH, GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.models.loader import load_model, load_model_and_tokenizer, load_weights
from tests.gguf.factories import (
    FF,
    HIDDEN,
    NUM_KV_HEADS,
    Layout,
    Q,
    V,
    pack_array,
    pack_file,
    pack_kv,
    pack_string,
    pack_tensor_info,
    raises_naming,
    scan_header,
    write_model,
)

U64_MAX = 2**64 - 1


# -- fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid model file (mixed F32/F16/Q8_0 tensors) whose bytes the tests corrupt."""
    path = tmp_path_factory.mktemp("valid") / "model.gguf"
    write_model(path, qtypes={"token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_0})
    return path.read_bytes()


@pytest.fixture(scope="module")
def layout(valid_bytes: bytes) -> Layout:
    return scan_header(valid_bytes)


def put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """A copy of `data` with `values` packed (little-endian `fmt`) over the bytes at `offset`."""
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def expect_error(
    path: Path,
    *fragments: str,
    action: Callable[[Path], object] = GGUFFile,
    error: type[GGUFError] = GGUFError,
) -> str:
    """Run `action(path)`; it must raise exactly `error` (or a subclass) naming the file and every fragment."""
    return raises_naming(lambda: action(path), path, *fragments, error=error)


def write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_all(path: Path) -> object:
    return load_model_and_tokenizer(path)


def parse_config(path: Path) -> ModelConfig:
    with GGUFFile(path) as f:
        return ModelConfig.from_gguf(f)


def u32_kv(key: str | bytes, value: int) -> bytes:
    return pack_kv(key, V.UINT32, struct.pack("<I", value))


# -- the fixed header ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    expect_error(write(tmp_path, b""), "empty file")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.gguf", "cannot open")
    expect_error(tmp_path, "cannot open")


def test_wrong_magic(tmp_path: Path, valid_bytes: bytes) -> None:
    expect_error(write(tmp_path, b"GGML" + valid_bytes[4:]), "not a GGUF file", "magic")
    # A file shorter than the magic is truncated, not something else.
    expect_error(write(tmp_path, b"GG"), "truncated", "magic")


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF_FFFF])
def test_unsupported_version(tmp_path: Path, valid_bytes: bytes, version: int) -> None:
    expect_error(write(tmp_path, put(valid_bytes, 4, "I", version)), f"unsupported GGUF version {version}")


def test_big_endian_version(tmp_path: Path, valid_bytes: bytes) -> None:
    # A big-endian writer stores version 3 as 0x03000000 when read little-endian.
    data = valid_bytes[:4] + struct.pack(">I", 3) + valid_bytes[8:]
    expect_error(write(tmp_path, data), "unsupported GGUF version", "big-endian")


def test_version_2_is_accepted(tmp_path: Path, valid_bytes: bytes) -> None:
    # v2 and v3 share the layout (v3 only allowed big-endian files), so a v2 header must still parse.
    with GGUFFile(write(tmp_path, put(valid_bytes, 4, "I", 2))) as f:
        assert f.version == 2
        assert len(f.tensors) == 20


@pytest.mark.parametrize(("offset", "what"), [(8, "tensor count"), (16, "metadata count")])
@pytest.mark.parametrize("count", [U64_MAX, 2**63, 2**40, 10**6])
def test_absurd_counts(tmp_path: Path, valid_bytes: bytes, offset: int, what: str, count: int) -> None:
    start = time.perf_counter()
    expect_error(write(tmp_path, put(valid_bytes, offset, "Q", count)), f"absurd {what} {count}")
    assert time.perf_counter() - start < 1.0, "a corrupt count must be refused before looping"


# -- truncation ---------------------------------------------------------------------------------------------


def test_truncated_header_at_every_early_offset(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    # Every cut inside the first 400 bytes (the fixed header and the first keys), then a stride through the
    # rest of the key-values and the tensor infos, and the last byte before the data section.
    cuts = [*range(1, 400), *range(400, layout.data_start, 61), layout.tensor_info_end - 1, layout.data_start - 1]
    path = tmp_path / "cut.gguf"
    for cut in cuts:
        path.write_bytes(valid_bytes[:cut])
        message = expect_error(path)
        assert "truncated" in message, f"cut at {cut}: {message}"


def test_truncated_tensor_data(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    # The header is intact, so the fault is found where the first tensor no longer fits.
    for cut in (layout.data_start, layout.data_start + 10, len(valid_bytes) // 2, len(valid_bytes) - 1):
        message = expect_error(write(tmp_path, valid_bytes[:cut]), "runs past the end of the file", "truncated")
        assert "tensor '" in message


def test_tensor_data_past_end(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    field = layout.tensors["blk.1.ffn_down.weight"]
    # Offsets stay 32-byte aligned, so that the only fault is the position past the end.
    past = -(-(len(valid_bytes) - layout.data_start) // 32) * 32
    for offset in (past, 2**63, U64_MAX - 31):
        data = put(valid_bytes, field.offset_offset, "Q", offset)
        expect_error(write(tmp_path, data), "'blk.1.ffn_down.weight'", "runs past the end")


# -- key-values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [U64_MAX, 2**63, 10**7])
def test_absurd_key_length(tmp_path: Path, valid_bytes: bytes, layout: Layout, length: int) -> None:
    first = layout.kvs["general.architecture"]
    expect_error(write(tmp_path, put(valid_bytes, first.key_offset, "Q", length)), f"absurd string length {length}")


def test_absurd_string_value_length(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    name = layout.kvs["general.name"]
    data = put(valid_bytes, name.value_offset, "Q", 2**62)
    expect_error(write(tmp_path, data), "absurd string length", "'general.name'")


@pytest.mark.parametrize("key", ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"])
@pytest.mark.parametrize("count", [2**62, U64_MAX, 2**32])
def test_absurd_array_length(tmp_path: Path, valid_bytes: bytes, layout: Layout, key: str, count: int) -> None:
    start = time.perf_counter()
    data = put(valid_bytes, layout.kvs[key].value_offset + 4, "Q", count)
    expect_error(write(tmp_path, data), f"absurd array length {count}", repr(key))
    assert time.perf_counter() - start < 1.0, "an absurd array length must fail before looping or allocating"


def test_absurd_string_inside_array(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    # The length of the first token string (just after the array's item type and count).
    data = put(valid_bytes, layout.kvs["tokenizer.ggml.tokens"].value_offset + 12, "Q", 2**62)
    expect_error(write(tmp_path, data), "absurd string length", "'tokenizer.ggml.tokens'")


def test_absurd_array_length_hand_packed(tmp_path: Path) -> None:
    # Arrays of every element size, including nested arrays whose elements are at least 12 bytes each.
    for item_type in (V.UINT8, V.UINT64, V.STRING, V.ARRAY, V.BOOL):
        data = pack_file([pack_kv("big", V.ARRAY, pack_array(item_type, 2**62, b"\0" * 64))])
        expect_error(write(tmp_path, data), "absurd array length", "'big'")


def test_nested_arrays_deeper_than_the_limit(tmp_path: Path) -> None:
    def nested(depth: int) -> bytes:
        payload = pack_array(V.UINT8, 1, b"\x07")
        for _ in range(depth - 1):
            payload = pack_array(V.ARRAY, 1, payload)
        return payload

    with GGUFFile(write(tmp_path, pack_file([pack_kv("deep", V.ARRAY, nested(MAX_ARRAY_DEPTH))]))) as f:
        value = f.metadata["deep"]
        for _ in range(MAX_ARRAY_DEPTH - 1):
            value = value[0]
        assert value == [7]
    too_deep = pack_file([pack_kv("deep", V.ARRAY, nested(MAX_ARRAY_DEPTH + 1))])
    expect_error(write(tmp_path, too_deep), "'deep'", "nests arrays deeper")
    # A thousand levels must not recurse a thousand frames deep.
    expect_error(write(tmp_path, pack_file([pack_kv("deep", V.ARRAY, nested(1000))])), "nests arrays deeper")


@pytest.mark.parametrize("vtype", [13, 99, 2**32 - 1])
def test_unknown_value_type(tmp_path: Path, valid_bytes: bytes, layout: Layout, vtype: int) -> None:
    data = put(valid_bytes, layout.kvs["general.name"].type_offset, "I", vtype)
    expect_error(write(tmp_path, data), "'general.name'", f"unknown value type {vtype}")


def test_unknown_array_item_type(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    data = put(valid_bytes, layout.kvs["tokenizer.ggml.merges"].value_offset, "I", 77)
    expect_error(write(tmp_path, data), "'tokenizer.ggml.merges'", "unknown value type 77")


def test_duplicate_key(tmp_path: Path) -> None:
    data = pack_file([u32_kv("a.b", 1), u32_kv("c", 2), u32_kv("a.b", 3)])
    expect_error(write(tmp_path, data), "duplicate metadata key 'a.b'")


def test_non_utf8_key_and_values(tmp_path: Path) -> None:
    expect_error(write(tmp_path, pack_file([u32_kv(b"ok", 1), u32_kv(b"bad\xff", 2)])), "metadata key #1", "UTF-8")
    bad_value = pack_kv("name", V.STRING, pack_string(b"\xc3\x28"))
    expect_error(write(tmp_path, pack_file([bad_value])), "'name'", "UTF-8")
    bad_item = pack_kv("list", V.ARRAY, pack_array(V.STRING, 2, pack_string("fine") + pack_string(b"\xed\xa0\x80")))
    expect_error(write(tmp_path, pack_file([bad_item])), "'list'", "UTF-8")


@pytest.mark.parametrize("alignment", [0, 3, 48, 2**31 + 1])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    path = tmp_path / "aligned.gguf"
    write_model(path, alignment=64)
    field = scan_header(path.read_bytes()).kvs["general.alignment"]
    data = put(path.read_bytes(), field.value_offset, "I", alignment)
    expect_error(write(tmp_path, data), "general.alignment", "power of two", repr(alignment))


def test_mistyped_alignment(tmp_path: Path) -> None:
    for kv in (pack_kv("general.alignment", V.STRING, pack_string("32")), pack_kv("general.alignment", V.BOOL, b"\1")):
        expect_error(write(tmp_path, pack_file([kv])), "general.alignment", "power of two")


# -- tensor infos -------------------------------------------------------------------------------------------


def test_misaligned_tensor_offset(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    field = layout.tensors["blk.0.attn_k.weight"]
    (offset,) = struct.unpack_from("<Q", valid_bytes, field.offset_offset)
    data = put(valid_bytes, field.offset_offset, "Q", offset + 4)
    expect_error(write(tmp_path, data), "'blk.0.attn_k.weight'", "misaligned", str(offset + 4))


@pytest.mark.parametrize("qtype", [4, 5, 31, 36, 1000, 2**32 - 1])
def test_unknown_ggml_type(tmp_path: Path, valid_bytes: bytes, layout: Layout, qtype: int) -> None:
    data = put(valid_bytes, layout.tensors["output_norm.weight"].type_offset, "I", qtype)
    expect_error(write(tmp_path, data), "'output_norm.weight'", f"unknown ggml type {qtype}")


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_dimension_count(tmp_path: Path, n_dims: int) -> None:
    info = pack_string("t") + struct.pack("<I", n_dims) + struct.pack("<6Q", *[32] * 6)
    expect_error(write(tmp_path, pack_file([], [info])), "'t'", f"{n_dims} dimensions")


def test_bad_dimension_count_in_written_file(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    data = put(valid_bytes, layout.tensors["blk.0.attn_q.weight"].n_dims_offset, "I", 0)
    expect_error(write(tmp_path, data), "'blk.0.attn_q.weight'", "0 dimensions")


def test_zero_dimension(tmp_path: Path, valid_bytes: bytes, layout: Layout) -> None:
    data = put(valid_bytes, layout.tensors["blk.0.ffn_up.weight"].dims_offset + 8, "Q", 0)
    expect_error(write(tmp_path, data), "'blk.0.ffn_up.weight'", "zero dimension")
    expect_error(write(tmp_path, pack_file([], [pack_tensor_info("z", [0], Q.F32)])), "'z'", "zero dimension")


def test_absurd_dimensions(tmp_path: Path) -> None:
    # Each dimension is plausible alone; their product is not (and would overflow int64).
    info = pack_tensor_info("huge", [2**32, 2**32, 2**32], Q.F32)
    start = time.perf_counter()
    expect_error(write(tmp_path, pack_file([], [info], data=b"\0" * 64)), "'huge'", "absurd shape")
    expect_error(write(tmp_path, pack_file([], [pack_tensor_info("h", [U64_MAX], Q.F32)])), "'h'", "absurd shape")
    assert time.perf_counter() - start < 1.0


def test_row_not_whole_blocks(tmp_path: Path) -> None:
    info = pack_tensor_info("q", [20, 2], Q.Q8_0)
    expect_error(write(tmp_path, pack_file([], [info], data=b"\0" * 128)), "'q'", "not a multiple", "block size 32")


def test_duplicate_tensor(tmp_path: Path) -> None:
    infos = [pack_tensor_info("w", [8], Q.F32, 0), pack_tensor_info("w", [8], Q.F32, 32)]
    expect_error(write(tmp_path, pack_file([], infos, data=b"\0" * 64)), "duplicate tensor 'w'")


def test_non_utf8_tensor_name(tmp_path: Path) -> None:
    info = pack_tensor_info(b"w\x80", [8], Q.F32)
    expect_error(write(tmp_path, pack_file([], [info], data=b"\0" * 32)), "tensor #0", "UTF-8")


# -- model-level faults: found by ModelConfig and the loader ------------------------------------------------


def test_unsupported_quant_type_is_named_at_load(tmp_path: Path) -> None:
    # IQ2_XXS is a well-formed file the reader accepts (it knows the block layout); only loading refuses it.
    path = tmp_path / "iq2.gguf"
    write_model(path, ff=256, qtypes={"blk.1.ffn_down.weight": Q.IQ2_XXS})
    with GGUFFile(path) as f:
        assert f.tensors["blk.1.ffn_down.weight"].qtype == Q.IQ2_XXS
    for action in (load_all, load_model):
        expect_error(path, "'blk.1.ffn_down.weight'", "IQ2_XXS", action=action, error=UnsupportedModelError)


def test_failed_load_leaves_the_file_unmapped(tmp_path: Path) -> None:
    # A load that fails half-way (after other tensors were dequantized) must still release the mapping.
    path = tmp_path / "iq2.gguf"
    write_model(path, ff=256, qtypes={"blk.1.ffn_down.weight": Q.IQ2_XXS})
    expect_error(path, "IQ2_XXS", action=load_model, error=UnsupportedModelError)
    assert str(path) not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("name", ["blk.1.ffn_up.weight", "output_norm.weight", "token_embd.weight"])
def test_missing_tensor(tmp_path: Path, name: str) -> None:
    path = tmp_path / "missing.gguf"
    write_model(path, drop_tensors=[name])
    # Without token_embd.weight the vocab size still comes from the tokenizer's tokens, so config succeeds and
    # the loader is what notices.
    expect_error(path, "missing tensor", repr(name), action=load_all)


@pytest.mark.parametrize(
    "key",
    [
        "general.architecture",
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
    ],
)
def test_missing_model_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "nokey.gguf"
    write_model(path, drop_keys=[key])
    if key == "general.architecture":
        # GGUFWriter always writes the architecture: cut it out of the bytes by renaming the key instead.
        data = path.read_bytes().replace(b"general.architecture", b"general.architecturX")
        path.write_bytes(data)
    expect_error(path, "missing metadata key", repr(key), action=parse_config)
    expect_error(path, "missing metadata key", repr(key), action=load_all)


@pytest.mark.parametrize("key", ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"])
def test_missing_tokenizer_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "notok.gguf"
    write_model(path, drop_keys=[key])
    expect_error(path, "missing tokenizer metadata key", repr(key), action=load_all)


def test_tensor_shape_contradicts_config(tmp_path: Path) -> None:
    kv = NUM_KV_HEADS * HIDDEN // 4
    path = tmp_path / "shape.gguf"
    write_model(path, shapes={"blk.1.attn_k.weight": (kv + 16, HIDDEN)})
    expect_error(path, "'blk.1.attn_k.weight'", f"[{kv + 16}, {HIDDEN}]", f"[{kv}, {HIDDEN}]", action=load_all)


def test_config_contradicts_tensors(tmp_path: Path) -> None:
    # The other way round: metadata says ff 96 while every FFN tensor has 128 rows.
    path = tmp_path / "ff.gguf"
    write_model(path, metadata={"llama.feed_forward_length": (96, V.UINT32)})
    expect_error(path, "'blk.0.ffn_gate.weight'", f"[{FF}, {HIDDEN}]", f"[96, {HIDDEN}]", action=load_model)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    write_model(path, arch="mamba")
    for action in (parse_config, load_all):
        message = expect_error(path, "unsupported architecture 'mamba'", action=action, error=UnsupportedModelError)
        for arch in SUPPORTED_ARCHITECTURES:
            assert arch in message
    assert set(SUPPORTED_ARCHITECTURES) == {"llama", "qwen2", "qwen3", "gemma3"}


def test_mistyped_architecture(tmp_path: Path) -> None:
    data = pack_file([u32_kv("general.architecture", 7)])
    expect_error(write(tmp_path, data), "'general.architecture'", "expected a string", action=parse_config)


# -- fuzzing ------------------------------------------------------------------------------------------------


class _Timeout(Exception):
    """Raised by the alarm: not a GGUFError, so a hang fails the test instead of stalling the suite."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Timeout(f"example took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def exercise(path: Path, *, load: bool) -> None:
    """Open, configure, tokenize and (optionally) load `path`; only success or GGUFError naming it may result."""
    try:
        f = GGUFFile(path)
    except GGUFError as exc:
        assert str(path) in str(exc)
        return
    with f:
        config: ModelConfig | None = None
        try:
            config = ModelConfig.from_gguf(f)
        except GGUFError as exc:
            assert str(path) in str(exc)
        try:
            Tokenizer.from_metadata(f.metadata, source=str(f.path))
        except GGUFError as exc:
            assert str(path) in str(exc)
        if config is not None and load:
            try:
                load_weights(f, config, torch.float32, torch.device("cpu"))
            except GGUFError as exc:
                assert str(path) in str(exc)
    assert f.closed


_HUGE = st.sampled_from([U64_MAX, 2**63, 2**62, 2**32, 2**32 - 1, 2**31, 10**9, 65_536, 0, 1, 5])


def mutations(size: int, hot: list[int]) -> st.SearchStrategy[list[tuple[str, int, int | bytes]]]:
    """1-4 edits of a file of `size` bytes, aimed half the time at `hot` offsets (header fields)."""
    position = st.one_of(st.sampled_from(hot), st.integers(0, size - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("u64"), position, _HUGE),
        st.tuples(st.just("u32"), position, st.integers(0, 2**32 - 1)),
        st.tuples(st.just("cut"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 16)),
    )
    return st.lists(edit, min_size=1, max_size=4)


def mutate(data: bytes, edits: list[tuple[str, int, int | bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, arg in edits:
        pos = min(pos, len(out))
        if kind == "flip" and pos < len(out):
            assert isinstance(arg, int)
            out[pos] ^= arg
        elif kind in ("u64", "u32"):
            assert isinstance(arg, int)
            packed = struct.pack("<Q" if kind == "u64" else "<I", arg)
            out[pos : pos + len(packed)] = packed
        elif kind == "cut":
            del out[pos:]
        elif kind == "insert":
            assert isinstance(arg, bytes)
            out[pos:pos] = arg
        elif kind == "delete":
            assert isinstance(arg, int)
            del out[pos : pos + arg]
    return bytes(out)


def hot_offsets(layout: Layout) -> list[int]:
    """Offsets of the counts, lengths, types and tensor fields that corrupt files most often get wrong."""
    hot = [4, 8, 16, layout.tensor_info_end, layout.data_start]
    for kv in layout.kvs.values():
        hot += [kv.key_offset, kv.type_offset, kv.value_offset, kv.value_offset + 4, kv.value_offset + 12]
    for t in layout.tensors.values():
        hot += [t.name_offset, t.n_dims_offset, t.dims_offset, t.dims_offset + 8, t.type_offset, t.offset_offset]
    return hot


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def small_model(fuzz_dir: Path) -> tuple[bytes, list[int]]:
    """A whole small model (header and data) and its hot offsets: fast enough to fuzz hundreds of times."""
    path = fuzz_dir / "small_src.gguf"
    write_model(path, num_layers=1, qtypes={"token_embd.weight": Q.Q8_0, "blk.0.ffn_up.weight": Q.Q4_0})
    data = path.read_bytes()
    return data, hot_offsets(scan_header(data))


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_small_model(data: st.DataObject, small_model: tuple[bytes, list[int]], fuzz_dir: Path) -> None:
    original, hot = small_model
    edits = data.draw(mutations(len(original), hot))
    path = fuzz_dir / "small.gguf"
    path.write_bytes(mutate(original, edits))
    with time_limit(5.0):
        exercise(path, load=True)


@pytest.fixture(scope="module")
def real_header(model_paths: dict[str, Path]) -> tuple[bytes, list[int]]:
    """The first 2 MiB of SmolLM2: all of its 1.8 MB header (49k-token vocab and merges) and a little data."""
    with open(model_paths["smollm2-135m"], "rb") as f:
        data = f.read(2 << 20)
    # scan_header only needs the header, which lies entirely within these bytes.
    return data, hot_offsets(scan_header(data))


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), drop_tensors=st.booleans())
def test_fuzz_real_header(
    data: st.DataObject, drop_tensors: bool, real_header: tuple[bytes, list[int]], fuzz_dir: Path
) -> None:
    # The cut file's tensors run past its end, so it only parses with the tensor count zeroed: half the examples
    # do that, so that mutated metadata reaches ModelConfig and the 49k-token tokenizer. Each costs up to ~0.7 s.
    original, hot = real_header
    if drop_tensors:
        original = put(original, 8, "Q", 0)
    edits = data.draw(mutations(len(original), hot))
    path = fuzz_dir / "real.gguf"
    path.write_bytes(mutate(original, edits))
    with time_limit(10.0):
        exercise(path, load=False)


def test_real_header_with_no_tensors_configures_and_tokenizes(
    real_header: tuple[bytes, list[int]], fuzz_dir: Path
) -> None:
    # With the tensor count zeroed the cut file is valid: config and tokenizer must come up from it.
    path = fuzz_dir / "real_no_tensors.gguf"
    path.write_bytes(put(real_header[0], 8, "Q", 0))
    with GGUFFile(path) as f:
        config = ModelConfig.from_gguf(f)
        tokenizer = Tokenizer.from_metadata(f.metadata, source=str(f.path))
    assert (config.arch, config.num_layers, config.hidden_size) == ("llama", 30, 576)
    assert tokenizer.vocab_size == config.vocab_size == 49152
