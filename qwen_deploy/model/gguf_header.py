"""A GGUF header reader on the standard library: metadata and the tensor table, no tensor data.

The `gguf` package's GGUFReader turns every element of every array into a numpy object; a Qwen3 GGUF holds
151,936 vocabulary strings and as many merges, which costs it over 4 seconds. `plan` and `up` read headers
on every run, so this reader walks the arrays without keeping them (their lengths are kept; short numeric
and string arrays are kept whole) and computes tensor sizes from ggml's block table. Format: GGUF v2/v3
(ggml/docs/gguf.md); tests compare it with GGUFReader field by field.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
KEEP_ARRAY_MAX = 4096  # arrays longer than this keep only their length

# ggml_type id -> (name, elements per block, bytes per block): ggml.h enum ggml_type and ggml.c type_traits
# (the same table as gguf.constants.GGML_QUANT_SIZES, which a test checks).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

# GGUF metadata value types: id -> struct format (8 string, 9 array are handled apart)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands, or it is cut short."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # ne0 first, as stored
    n_elements: int
    n_bytes: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    fields: dict[str, Any]  # scalars, strings, and arrays up to KEEP_ARRAY_MAX elements
    array_lengths: dict[str, int]  # every array's length
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_bytes: int

    def get(self, key: str) -> Any:
        return self.fields.get(key)


class _Cursor:
    def __init__(self, buf: Any, size: int):
        self.buf, self.pos, self.size = buf, 0, size

    def unpack(self, fmt: str) -> Any:
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            raise GGUFError(f"the header is cut short at byte {self.pos:,}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += width
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.pos + length > self.size:
            raise GGUFError(f"a string runs past the end of the file at byte {self.pos:,}")
        text = bytes(self.buf[self.pos : self.pos + length]).decode("utf-8", errors="replace")
        self.pos += length
        return text

    def value(self, kind: int) -> Any:
        if kind in _SCALAR:
            return self.unpack(_SCALAR[kind])
        if kind == 8:
            return self.string()
        raise GGUFError(f"unknown metadata value type {kind}")


MAX_ARRAY_DEPTH = 8
_U64 = struct.Struct("<Q")


def _read_array(cur: _Cursor, depth: int = 0) -> tuple[list[Any] | None, int]:
    if depth > MAX_ARRAY_DEPTH:
        raise GGUFError(f"arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
    kind = cur.unpack("<I")
    count = cur.unpack("<Q")
    keep = count <= KEEP_ARRAY_MAX
    if kind in _SCALAR:
        fmt = _SCALAR[kind]
        width = struct.calcsize(fmt)
        end = cur.pos + width * count
        if end > cur.size:
            raise GGUFError("an array runs past the end of the file")
        values = list(struct.unpack_from(f"<{count}{fmt[1]}", cur.buf, cur.pos)) if keep else None
        cur.pos = end
        return values, count
    if kind == 8:
        if keep:
            return [cur.string() for _ in range(count)], count
        # a vocabulary: ~150,000 strings walked for their lengths only (a tight loop: this is most of the header)
        # (no bounds test per string: unpack_from raises struct.error when a length would lie past the end,
        # OverflowError when a corrupt length has pushed the position past what an index can hold)
        read_length, buf, pos = _U64.unpack_from, cur.buf, cur.pos
        try:
            for _ in range(count):
                pos += 8 + read_length(buf, pos)[0]
        except (struct.error, OverflowError):
            raise GGUFError("a string array runs past the end of the file") from None
        if pos > cur.size:
            raise GGUFError("a string runs past the end of the file")
        cur.pos = pos
        return None, count
    if kind == 9:  # arrays of arrays: walk them, keep nothing
        for _ in range(count):
            _read_array(cur, depth + 1)
        return None, count
    raise GGUFError(f"unknown array element type {kind}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table; GGUFError when it is not one or is truncated."""
    import stat

    info = Path(path).stat()
    if not stat.S_ISREG(info.st_mode):
        raise GGUFError("it is not a regular file")
    with open(path, "rb") as handle:
        size = info.st_size
        if size < 24:
            raise GGUFError("the file is too short to be a GGUF")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size)


def _parse(buf: Any, size: int) -> GGUFHeader:
    cur = _Cursor(buf, size)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFError("bad magic (not a GGUF file)")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors = cur.unpack("<Q")
    n_kv = cur.unpack("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise GGUFError("implausible tensor or metadata count")
    fields: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string()
        kind = cur.unpack("<I")
        if kind == 9:
            values, count = _read_array(cur)
            lengths[key] = count
            if values is not None:
                fields[key] = values
        else:
            fields[key] = cur.value(kind)
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        type_id = cur.unpack("<I")
        offset = cur.unpack("<Q")
        if type_id not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r} has unknown ggml type {type_id}")
        type_name, block, type_size = GGML_TYPES[type_id]
        if not shape or any(dim < 1 for dim in shape) or shape[0] % block:
            raise GGUFError(f"tensor {name!r} has an impossible shape {shape} for {type_name}")
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        infos.append(TensorInfo(name, type_name, shape, n_elements, n_elements // block * type_size, offset))
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or not 0 < alignment <= 1 << 20:
        raise GGUFError("general.alignment is not a positive number")
    data_offset = -(-cur.pos // alignment) * alignment
    misaligned = next((t.name for t in infos if t.offset % alignment), None)
    if misaligned is not None:
        raise GGUFError(f"tensor {misaligned!r} does not start on a {alignment}-byte boundary")
    end = max((t.offset + t.n_bytes for t in infos), default=0)
    if data_offset + end > size:
        raise GGUFError(
            f"the file is truncated: its tensors end at byte {data_offset + end:,} but it has {size:,} bytes"
        )
    return GGUFHeader(version, fields, lengths, tuple(infos), data_offset, size)
