"""Write a synthetic GGUF model: a preset's shapes, random weights, and a real tokenizer copied from another file.

The file goes through gguf-py's `GGUFWriter` in its streaming order: all tensor infos are declared first (names,
shapes, types, sizes), then header, metadata and tensor directory are written, then each tensor's data is generated
and written chunk by chunk. Peak memory is therefore the tokenizer's metadata plus a few chunks, whatever the model
size. The data is written to `OUT.partial` and renamed at the end, so an interrupted run never leaves a file that
looks complete.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from gguf.constants import GGML_QUANT_VERSION, GGUFValueType
from gguf.gguf_writer import GGUFWriter
from tqdm import tqdm

from rocmforge.gguf.reader import GGUFFile
from rocmforge.hub import resolve_model
from rocmforge.synth.errors import SynthError
from rocmforge.synth.mixes import QuantScheme, TensorSpec, get_scheme, plan_tensors
from rocmforge.synth.presets import Preset
from rocmforge.synth.tensors import CHUNK_BYTES, tensor_chunks

V = GGUFValueType

# The named model whose tokenizer a synthetic model of each architecture gets by default.
DEFAULT_TOKENIZER_SOURCES = {"llama": "smollm2-135m", "qwen2": "qwen2.5-coder-0.5b"}
TOKENIZER_PREFIX = "tokenizer."
_FIXED_SIZES = {V.UINT8: 1, V.INT8: 1, V.BOOL: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4}
_FIXED_SIZES |= {V.FLOAT32: 4, V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}


@dataclass(frozen=True)
class TypedValue:
    """A metadata value with the GGUF type it had in its source file (and its item type, for arrays)."""

    value: Any
    vtype: GGUFValueType
    item_type: GGUFValueType | None = None


def _metadata_types(path: Path, keys: set[str]) -> dict[str, tuple[GGUFValueType, GGUFValueType | None]]:
    """The value type (and array item type) of each of `keys` in a GGUF file that GGUFFile has already validated.

    Our reader keeps values, not their GGUF types, and llama.cpp insists on the exact type of some keys (token ids
    must be UINT32, token types INT32, ...): copying a key faithfully needs the type it was stored with.
    """
    types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        (n_kv,) = struct.unpack_from("<Q", buf, 16)
        pos = 24

        def skip(vtype: GGUFValueType, pos: int) -> int:
            if vtype == V.STRING:
                return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
            if vtype != V.ARRAY:
                return pos + _FIXED_SIZES[vtype]
            item_type, count = V(struct.unpack_from("<I", buf, pos)[0]), struct.unpack_from("<Q", buf, pos + 4)[0]
            pos += 12
            if item_type in _FIXED_SIZES:
                return int(pos + count * _FIXED_SIZES[item_type])
            for _ in range(count):  # strings (or nested arrays) have their own lengths
                pos = skip(item_type, pos)
            return pos

        for _ in range(n_kv):
            (length,) = struct.unpack_from("<Q", buf, pos)
            key = bytes(buf[pos + 8 : pos + 8 + length]).decode()
            pos += 8 + length
            vtype = V(struct.unpack_from("<I", buf, pos)[0])
            pos += 4
            if key in keys:
                item = V(struct.unpack_from("<I", buf, pos)[0]) if vtype == V.ARRAY else None
                types[key] = (vtype, item)
                if len(types) == len(keys):
                    break
            pos = skip(vtype, pos)
    return types


def read_tokenizer_metadata(source: str | os.PathLike[str]) -> dict[str, TypedValue]:
    """Every `tokenizer.*` key of a GGUF file (a path or a named model), with its GGUF type."""
    path = resolve_model(os.fspath(source))
    with GGUFFile(path) as f:
        values = {k: v for k, v in f.metadata.items() if k.startswith(TOKENIZER_PREFIX)}
    tokens = values.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise SynthError(f"tokenizer source {path} has no tokenizer (no tokenizer.ggml.tokens list)")
    types = _metadata_types(path, set(values))
    return {k: TypedValue(v, *types[k]) for k, v in values.items()}


@dataclass(frozen=True)
class SynthResult:
    path: Path
    preset: Preset
    scheme: QuantScheme
    vocab_size: int
    n_bytes: int  # the file's size
    type_counts: dict[str, int]  # tensor type name -> how many tensors
    seconds: float

    def summary(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.type_counts.items(), key=lambda kv: -kv[1]))
        return (
            f"wrote {self.path} ({self.n_bytes / 1e9:.2f} GB; {self.preset.arch} {self.preset.name} shaped as "
            f"{self.preset.reference}, vocab {self.vocab_size}, {self.scheme.name}: {types}) in {self.seconds:.1f} s"
        )


class _StreamedTensor:
    """Stands in for a numpy array in `GGUFWriter.write_tensor_data`, which only reads `nbytes` and calls `tofile`.

    `tofile` generates the data chunk by chunk and writes each chunk as it comes, so that a tensor never exists in
    memory as a whole (gguf-py's own lazy tensors of `convert_hf_to_gguf.py` rely on the same duck typing).
    """

    def __init__(self, spec: TensorSpec, seed: int, chunk_bytes: int, on_bytes: Callable[[int], object]) -> None:
        self.spec = spec
        self.nbytes = spec.n_bytes
        self.seed = seed
        self.chunk_bytes = chunk_bytes
        self.on_bytes = on_bytes

    def tofile(self, fp: IO[bytes]) -> None:
        # One generator per tensor, seeded by the run's seed and the tensor's name: a tensor's values do not depend
        # on the tensors written before it.
        rng = np.random.default_rng([self.seed, zlib.crc32(self.spec.name.encode())])
        written = 0
        for chunk in tensor_chunks(self.spec, rng, self.chunk_bytes):
            fp.write(memoryview(chunk))
            written += chunk.nbytes
            self.on_bytes(chunk.nbytes)
        assert written == self.nbytes, (self.spec.name, written, self.nbytes)


def _add_model_metadata(
    writer: GGUFWriter, preset: Preset, scheme: QuantScheme, vocab: int, seed: int, tokenizer: dict[str, TypedValue]
) -> None:
    writer.add_type("model")
    writer.add_name(f"synthetic {preset.arch} {preset.name} {scheme.name}")
    writer.add_description(
        f"random weights from `rocmforge synth` (seed {seed}) in the shapes of {preset.reference}; not a trained model"
    )
    writer.add_file_type(int(scheme.file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_block_count(preset.layers)
    writer.add_context_length(preset.context_length)
    writer.add_embedding_length(preset.hidden)
    writer.add_feed_forward_length(preset.intermediate)
    writer.add_head_count(preset.heads)
    writer.add_head_count_kv(preset.kv_heads)
    if preset.head_dim * preset.heads != preset.hidden:
        writer.add_key_length(preset.head_dim)
        writer.add_value_length(preset.head_dim)
    writer.add_rope_dimension_count(preset.head_dim)
    writer.add_rope_freq_base(preset.rope_theta)
    writer.add_layer_norm_rms_eps(preset.rms_eps)
    writer.add_vocab_size(vocab)
    for key, typed in tokenizer.items():
        writer.add_key_value(key, typed.value, typed.vtype, sub_type=typed.item_type)


def _check_output(out: Path, overwrite: bool, n_bytes: int) -> None:
    if out.is_dir():
        raise SynthError(f"output {out} is a directory; give a file name such as {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise SynthError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise SynthError(f"{out} already exists (pass --force to overwrite it)")
    free = shutil.disk_usage(out.parent).free
    if free < n_bytes:
        raise SynthError(f"cannot write {out}: it needs {n_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB are free there")


def write_synthetic_model(
    out: str | os.PathLike[str],
    preset: Preset,
    quant: str | QuantScheme,
    *,
    tokenizer_from: str | os.PathLike[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> SynthResult:
    """Write a random-weight model shaped by `preset`, stored as `quant`, with `tokenizer_from`'s tokenizer.

    `tokenizer_from` is a GGUF path or a named model (default: DEFAULT_TOKENIZER_SOURCES[preset.arch]); the model's
    vocabulary is that tokenizer's. The same arguments always produce the same bytes.
    """
    started = time.perf_counter()
    scheme = quant if isinstance(quant, QuantScheme) else get_scheme(quant)
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() != ".gguf":
        raise SynthError(f"output {out_path} must end in .gguf")
    source = tokenizer_from if tokenizer_from is not None else DEFAULT_TOKENIZER_SOURCES[preset.arch]
    if Path(os.fspath(source)).expanduser().resolve() == out_path.resolve():
        raise SynthError(f"the output {out_path} cannot be the tokenizer source")
    tokenizer = read_tokenizer_metadata(source)
    vocab = len(tokenizer["tokenizer.ggml.tokens"].value)
    specs = plan_tensors(preset, vocab, scheme)
    total = sum(s.n_bytes for s in specs)
    _check_output(out_path, overwrite, total)

    partial = out_path.with_name(out_path.name + ".partial")
    writer = GGUFWriter(partial, preset.arch)
    _add_model_metadata(writer, preset, scheme, vocab, seed, tokenizer)
    for spec in specs:
        # Byte shape + raw_dtype, as gguf-py takes already-quantized data; it derives the element shape itself.
        byte_shape = (*spec.shape[:-1], spec.n_bytes // max(1, int(np.prod(spec.shape[:-1], dtype=np.int64))))
        writer.add_tensor_info(spec.name, byte_shape, np.dtype(np.uint8), spec.n_bytes, raw_dtype=spec.qtype)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {out_path.name}", disable=not progress) as bar:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for spec in specs:
                streamed = _StreamedTensor(spec, seed, chunk_bytes, bar.update)
                # GGUFWriter is typed for arrays but needs only nbytes and tofile (see _StreamedTensor).
                writer.write_tensor_data(cast("np.ndarray[Any, Any]", streamed))
        writer.close()
        os.replace(partial, out_path)
    except OSError as exc:
        writer.close()
        partial.unlink(missing_ok=True)
        raise SynthError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    counts = Counter(s.qtype.name for s in specs)
    return SynthResult(
        path=out_path,
        preset=preset,
        scheme=scheme,
        vocab_size=vocab,
        n_bytes=out_path.stat().st_size,
        type_counts=dict(counts),
        seconds=time.perf_counter() - started,
    )
