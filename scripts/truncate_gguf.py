"""Write a copy of a GGUF model keeping only its first N transformer blocks (a small *real* model for tests).

Why: the GPU machine cannot download models and only ~64 MiB travels to it, but a real model's first blocks,
embedding and tokenizer give realistic shapes and peaked, meaningful logits. Raw tensor bytes are copied as
they are (no requantization); every metadata key is copied with `{arch}.block_count` set to N.

    .venv/bin/python scripts/truncate_gguf.py IN.gguf OUT.gguf --layers 8
"""

from __future__ import annotations

import argparse
import re

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from rocmforge.gguf.reader import GGUFFile

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _value_type(value: object) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return GGUFValueType.INT32 if value < 0 else GGUFValueType.UINT32
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    return GGUFValueType.STRING


def truncate(source: str, destination: str, num_layers: int) -> None:
    with GGUFFile(source) as model:
        arch = model.metadata["general.architecture"]
        writer = GGUFWriter(destination, arch)
        for key, value in model.metadata.items():
            if key in ("general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"):
                continue
            if key == f"{arch}.block_count":
                value = num_layers
            if isinstance(value, (list, tuple, np.ndarray)):
                writer.add_array(key, list(value))
            else:
                writer.add_key_value(key, value, _value_type(value))
        for name, info in model.tensors.items():
            match = _BLOCK.match(name)
            if match and int(match.group(1)) >= num_layers:
                continue
            raw = np.frombuffer(model.raw_tensor(name), dtype=np.uint8).copy()
            dtype = info.qtype
            if dtype == GGMLQuantizationType.F32:
                writer.add_tensor(name, raw.view(np.float32).reshape(info.shape))
            elif dtype == GGMLQuantizationType.F16:
                writer.add_tensor(name, raw.view(np.float16).reshape(info.shape))
            else:
                rows = int(np.prod(info.shape[:-1], dtype=np.int64))  # the writer takes [rows, bytes per row]
                writer.add_tensor(name, raw.reshape(*info.shape[:-1], info.n_bytes // max(rows, 1)), raw_dtype=dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--layers", type=int, required=True)
    args = parser.parse_args()
    truncate(args.source, args.destination, args.layers)


if __name__ == "__main__":
    main()
