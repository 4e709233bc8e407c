"""A bounded, validating GGUF v2/v3 reader over one read-only mmap.

Why not `gguf.GGUFReader` for opening files: it walks every array element through Python (about 10 s for
a 262k-token vocabulary on a 2-core machine) and trusts every count and length in the header, so a hostile
file can make it loop for hours. This reader checks each count and length against the bytes that remain
before using it, reads numeric arrays in one `np.frombuffer`, and keeps tensors as zero-copy views of the
mapping. It takes its vocabulary (value types, quant types, block sizes) from the `gguf` package, which
stays the reference for dequantization and the writer for test and synthetic files.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from rocmforge.errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# Arrays nest (an array of arrays) only in exotic files; a bound keeps recursion finite on hostile input.
MAX_ARRAY_DEPTH = 4
# No real tensor comes near 2**48 elements; larger products only come from corrupted dims.
MAX_TENSOR_ELEMENTS = 1 << 48

_SCALAR_DTYPES: dict[GGUFValueType, np.dtype[Any]] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in the file. `shape` is in torch order (GGUF's `ne` reversed)."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class _Cursor:
    """Reads little-endian values from a byte buffer, failing with GGUFError instead of reading past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at byte offset {self.pos})")

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated file: {what} needs {n} bytes, {self.remaining} remain")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def string(self, what: str) -> str:
        length = self.u64(f"length of {what}")
        if length > self.remaining:
            raise self.fail(
                f"absurd string length {length} for {what}: only {self.remaining} bytes remain (truncated or corrupt)"
            )
        # Copy before decoding: a memoryview slice kept alive by a decode error's traceback would pin the
        # mapping, and close() would then fail and mask the real fault.
        raw = bytes(self.take(length, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason})") from None


def _value_type(raw: int, cursor: _Cursor, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cursor.fail(f"metadata key {key!r} has unknown value type {raw}") from None


def _read_value(cursor: _Cursor, vtype: GGUFValueType, key: str, depth: int = 0) -> Any:
    if vtype == GGUFValueType.STRING:
        return cursor.string(f"value of {key!r}")
    if vtype in _SCALAR_DTYPES:
        dtype = _SCALAR_DTYPES[vtype]
        value = np.frombuffer(cursor.take(dtype.itemsize, f"value of {key!r}"), dtype=dtype)[0]
        return bool(value) if vtype == GGUFValueType.BOOL else value.item()
    # ARRAY
    if depth >= MAX_ARRAY_DEPTH:
        raise cursor.fail(f"metadata key {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
    item_type = _value_type(cursor.u32(f"array type of {key!r}"), cursor, key)
    count = cursor.u64(f"array length of {key!r}")
    # Every element takes at least one byte (a string at least its 8-byte length), so a count larger than
    # the bytes left is corrupt: refuse it before looping or allocating.
    min_size = 8 if item_type == GGUFValueType.STRING else _SCALAR_DTYPES.get(item_type, np.dtype("u1")).itemsize
    if count * min_size > cursor.remaining:
        raise cursor.fail(
            f"absurd array length {count} for metadata key {key!r}: only {cursor.remaining} bytes remain "
            "(truncated or corrupt)"
        )
    if item_type in _SCALAR_DTYPES:
        dtype = _SCALAR_DTYPES[item_type]
        values = np.frombuffer(cursor.take(count * dtype.itemsize, f"array {key!r}"), dtype=dtype)
        return [bool(v) for v in values] if item_type == GGUFValueType.BOOL else values.tolist()
    return [_read_value(cursor, item_type, key, depth + 1) for _ in range(count)]


class GGUFFile:
    """An open GGUF file: its metadata, its tensor directory, and zero-copy views of tensor data.

    Use as a context manager or call `close()`; the mapping and file descriptor are released at once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mmap: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{self.path}: empty file, not a GGUF model")
                # The mapping outlives the descriptor: mmap keeps its own reference to the file.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise GGUFError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            self._parse()
        except BaseException:
            # Not close(): if the exception's traceback still references a view, close() would raise
            # "cannot unmap" and hide the parse error that names the actual fault.
            self._drop()
            raise

    # -- parsing -------------------------------------------------------------------------------------
    def _parse(self) -> None:
        assert self._mmap is not None
        buf = memoryview(self._mmap)
        cursor = _Cursor(buf, self.path)
        try:
            self._parse_with(cursor)
        finally:
            # Release our exported view, so that close() can unmap deterministically.
            cursor.buf = memoryview(b"")
            buf.release()

    def _parse_with(self, cursor: _Cursor) -> None:
        magic = bytes(cursor.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise cursor.fail(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
        self.version = cursor.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            hint = " (big-endian files are not supported)" if self.version >= 1 << 16 else ""
            raise cursor.fail(
                f"unsupported GGUF version {self.version}{hint}; supported: {', '.join(map(str, SUPPORTED_VERSIONS))}"
            )
        tensor_count = cursor.u64("tensor count")
        kv_count = cursor.u64("metadata count")
        # A key-value pair is at least 13 bytes and a tensor info at least 24: bound both counts by the file.
        if kv_count * 13 > cursor.remaining:
            raise cursor.fail(
                f"absurd metadata count {kv_count} for a file of {len(cursor.buf)} bytes (truncated or corrupt)"
            )
        if tensor_count * 24 > cursor.remaining:
            raise cursor.fail(
                f"absurd tensor count {tensor_count} for a file of {len(cursor.buf)} bytes (truncated or corrupt)"
            )

        self.metadata: dict[str, Any] = {}
        for index in range(kv_count):
            key = cursor.string(f"metadata key #{index}")
            vtype = _value_type(cursor.u32(f"value type of {key!r}"), cursor, key)
            if key in self.metadata:
                raise cursor.fail(f"duplicate metadata key {key!r}")
            self.metadata[key] = _read_value(cursor, vtype, key)

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        # bool is an int subclass; a BOOL-typed alignment is as malformed as a string one.
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            raise cursor.fail(f"general.alignment must be a positive power of two, got {alignment!r}")
        self.alignment = alignment

        raw_infos: list[tuple[str, GGMLQuantizationType, tuple[int, ...], int]] = []
        for index in range(tensor_count):
            name = cursor.string(f"name of tensor #{index}")
            n_dims = cursor.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cursor.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
            ne = [cursor.u64(f"dimension of tensor {name!r}") for _ in range(n_dims)]
            raw_type = cursor.u32(f"type of tensor {name!r}")
            offset = cursor.u64(f"data offset of tensor {name!r}")
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise cursor.fail(f"tensor {name!r} has unknown ggml type {raw_type}") from None
            raw_infos.append((name, qtype, tuple(ne), offset))

        data_start = -(-cursor.pos // alignment) * alignment
        self.data_offset = data_start
        self.tensors: dict[str, TensorInfo] = {}
        for name, qtype, ne, offset in raw_infos:
            self.tensors[name] = self._check_tensor(cursor, name, qtype, ne, offset, data_start)

    def _check_tensor(
        self,
        cursor: _Cursor,
        name: str,
        qtype: GGMLQuantizationType,
        ne: tuple[int, ...],
        offset: int,
        data_start: int,
    ) -> TensorInfo:
        if name in self.tensors:
            raise GGUFError(f"{self.path}: duplicate tensor {name!r}")
        # Said apart from absurd sizes: an empty tensor is a different fault from an overflowing one.
        if any(d == 0 for d in ne):
            raise GGUFError(f"{self.path}: tensor {name!r} has a zero dimension in its shape {list(ne)}")
        if np.prod([float(d) for d in ne]) > MAX_TENSOR_ELEMENTS:
            raise GGUFError(f"{self.path}: tensor {name!r} has absurd shape {list(ne)}")
        if qtype not in GGML_QUANT_SIZES:
            raise GGUFError(f"{self.path}: tensor {name!r} has ggml type {qtype.name}, which has no known layout")
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block_size:
            raise GGUFError(
                f"{self.path}: tensor {name!r} row length {ne[0]} is not a multiple of the "
                f"{qtype.name} block size {block_size}"
            )
        if offset % self.alignment:
            raise GGUFError(
                f"{self.path}: tensor {name!r} data offset {offset} is misaligned (alignment {self.alignment})"
            )
        n_elements = int(np.prod(ne, dtype=np.int64))
        n_bytes = n_elements // block_size * type_size
        start = data_start + offset
        if start + n_bytes > len(cursor.buf):
            raise GGUFError(
                f"{self.path}: tensor {name!r} data ({n_bytes} bytes at offset {start}) runs past the end of "
                f"the file ({len(cursor.buf)} bytes): truncated or corrupt"
            )
        return TensorInfo(name=name, qtype=qtype, shape=tuple(reversed(ne)), offset=start, n_bytes=n_bytes)

    # -- access --------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._mmap is None

    @property
    def architecture(self) -> str:
        if "general.architecture" not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key 'general.architecture'")
        arch = self.metadata["general.architecture"]
        if not isinstance(arch, str):
            # Present but mistyped: say so rather than calling it missing.
            raise GGUFError(
                f"{self.path}: metadata key 'general.architecture' is {type(arch).__name__}, expected a string"
            )
        return arch

    def require(self, key: str) -> Any:
        """The value of a metadata key, or a GGUFError naming the file and the missing key."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: missing metadata key {key!r}")
        return self.metadata[key]

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: missing tensor {name!r}") from None

    def raw_tensor(self, name: str) -> np.ndarray:
        """Zero-copy uint8 view of one tensor's bytes, shaped (rows, bytes per row).

        The view pins the mapping: drop it before `close()` (dequantize or copy what you keep).
        """
        if self._mmap is None:
            raise GGUFError(f"{self.path}: file is closed")
        info = self.tensor_info(name)
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        flat = np.frombuffer(self._mmap, dtype=np.uint8, count=info.n_bytes, offset=info.offset)
        return flat.reshape(rows, info.n_bytes // rows)

    def close(self) -> None:
        """Unmap the file now. Idempotent. Fails loudly if tensor views handed out are still alive."""
        if self._mmap is None:
            return
        try:
            self._mmap.close()
        except BufferError:
            raise GGUFError(f"{self.path}: cannot unmap while views of its tensors are still referenced") from None
        self._mmap = None

    def _drop(self) -> None:
        """Unmap if possible, else let go of the mapping (it is unmapped when the last view dies). Never raises."""
        if self._mmap is None:
            return
        with contextlib.suppress(BufferError):
            self._mmap.close()
        self._mmap = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        else:
            # An exception is in flight (e.g. an unsupported tensor type found while loading): its traceback
            # may still reference tensor views, and a "cannot unmap" error must not replace it.
            self._drop()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.tensors)} tensors"
        return f"GGUFFile({str(self.path)!r}, v{getattr(self, 'version', '?')}, {state})"
