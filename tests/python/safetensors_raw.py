# SPDX-License-Identifier: Apache-2.0
"""A small, independent safetensors reader/writer that keeps every tensor as raw bytes.

torch 1.13 and numpy have no float8 dtype, so neither they nor the official `safetensors`
package (through them) can hand us DeepSeek's F8_E4M3 weights. This module reads and writes the
format from its specification alone (8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
byte buffer), decodes E4M3 from the OCP 8-bit floating point specification, and dequantizes
DeepSeek-V3's block-scaled weights (`<name>_scale_inv`, one F32 per 128x128 block) to float64.

Nothing here is taken from attn's sources; it is the second, independent side of the checks in
test_weight_formats.py.

Public surface:
  RawTensor(dtype, shape, data)           .to_torch()  (F8_E4M3 -> uint8 codes), .to_float64()
  read_raw(path) -> (tensors, metadata)   write_raw(path, tensors, metadata=None)
  raw_from_torch(tensor), raw_fp8(codes uint8 tensor)
  E4M3_TABLE  float64 [256]: the value of every E4M3 code (NaN for 0x7f, 0xff)
  e4m3_decode(codes) -> float64,  e4m3_encode_nearest(values) -> uint8 codes (for test data),
  e4m3_gap(codes) -> float64 rounding step at each code
  dequantize(tensors, block=(128, 128)) -> {weight name: float64 tensor} (scales folded in)
  split_into_shards(path, directory, n, prefix="model") -> path of model.safetensors.index.json
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

# Bytes per element of every dtype the format names.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}

# dtypes torch 1.13 can view directly (little-endian host assumed, as the format is).
_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.uint8,  # the raw codes; decode with e4m3_decode
}
_FROM_TORCH = {v: k for k, v in _TORCH_DTYPES.items() if k != "F8_E4M3"}


# --------------------------------------------------------------------------------------------
# E4M3 (OCP OFP8, "E4M3FN"): 1 sign bit, 4 exponent bits with bias 7, 3 mantissa bits;
# exponent 0 is subnormal (m/8 * 2^-6 = m * 2^-9); no infinities; S.1111.111 (0x7f, 0xff) is
# NaN, so the largest finite magnitude is S.1111.110 = 1.75 * 2^8 = 448.
# --------------------------------------------------------------------------------------------


def _e4m3_value(code: int) -> float:
    sign = -1.0 if code & 0x80 else 1.0
    e = (code >> 3) & 0xF
    m = code & 0x7
    if e == 0xF and m == 0x7:
        return math.nan
    if e == 0:
        return sign * m * 2.0 ** -9
    return sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)


E4M3_TABLE = torch.tensor([_e4m3_value(c) for c in range(256)], dtype=torch.float64)
E4M3_MAX = 448.0
E4M3_NAN_CODES = (0x7F, 0xFF)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> float64 values (exact)."""
    assert codes.dtype == torch.uint8, codes.dtype
    return E4M3_TABLE[codes.long()]


def e4m3_encode_nearest(values: torch.Tensor) -> torch.Tensor:
    """float values (|v| <= 448) -> uint8 code of the nearest finite E4M3 value (ties: the
    smaller magnitude). Used only to build test data and to judge an encoder's choices."""
    v = values.to(torch.float64).reshape(-1)
    mags = E4M3_TABLE[:0x7F]  # codes 0x00..0x7e: 0 and the 126 positive values, increasing
    a = v.abs().clamp(max=E4M3_MAX)
    hi = torch.searchsorted(mags, a).clamp(1, 0x7E)
    lo = hi - 1
    pick_hi = (mags[hi] - a) < (a - mags[lo])
    code = torch.where(pick_hi, hi, lo)
    code = code | ((v < 0).long() << 7)
    return code.to(torch.uint8).reshape(values.shape)


def e4m3_gap(codes: torch.Tensor) -> torch.Tensor:
    """The distance from each finite code's magnitude to the next larger E4M3 magnitude (for
    448 the step below it): the rounding step a correctly rounding encoder is within half of."""
    mags = E4M3_TABLE[:0x7F]
    steps = torch.cat((mags[1:] - mags[:-1], (mags[-1] - mags[-2]).reshape(1)))
    return steps[(codes & 0x7F).long().clamp(max=0x7E)]


# --------------------------------------------------------------------------------------------
# Tensors and files
# --------------------------------------------------------------------------------------------


@dataclass
class RawTensor:
    dtype: str
    shape: Tuple[int, ...]
    data: bytes

    def __post_init__(self):
        self.shape = tuple(int(n) for n in self.shape)
        want = math.prod(self.shape) * DTYPE_SIZES[self.dtype]
        assert len(self.data) == want, (self.dtype, self.shape, len(self.data), want)

    def numel(self) -> int:
        return math.prod(self.shape)

    def to_torch(self) -> torch.Tensor:
        """The stored elements as a torch tensor (a copy); F8_E4M3 comes back as uint8 codes."""
        dt = _TORCH_DTYPES[self.dtype]
        if self.numel() == 0:
            return torch.empty(self.shape, dtype=dt)
        return torch.frombuffer(bytearray(self.data), dtype=dt).reshape(self.shape).clone()

    def to_float64(self) -> torch.Tensor:
        t = self.to_torch()
        if self.dtype == "F8_E4M3":
            return e4m3_decode(t)
        return t.to(torch.float64)


def raw_from_torch(t: torch.Tensor) -> RawTensor:
    t = t.detach().contiguous()
    dtype = _FROM_TORCH[t.dtype]
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return RawTensor(dtype, tuple(t.shape), data)


def raw_fp8(codes: torch.Tensor) -> RawTensor:
    assert codes.dtype == torch.uint8
    return RawTensor("F8_E4M3", tuple(codes.shape), codes.contiguous().numpy().tobytes())


def read_raw(path) -> Tuple[Dict[str, RawTensor], Dict[str, str]]:
    """Reads a whole safetensors file: ({name: RawTensor}, __metadata__ or {})."""
    blob = Path(path).read_bytes()
    if len(blob) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    buf = blob[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    tensors: Dict[str, RawTensor] = {}
    spans = []
    for name, info in header.items():
        b, e = info["data_offsets"]
        if not (0 <= b <= e <= len(buf)):
            raise ValueError(f"{path}: {name} offsets {b}..{e} outside the buffer ({len(buf)})")
        tensors[name] = RawTensor(info["dtype"], tuple(info["shape"]), bytes(buf[b:e]))
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            raise ValueError(f"{path}: tensor data not contiguous at byte {pos}")
        pos = e
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes after the tensor data")
    return tensors, meta


def write_raw(path, tensors: Mapping[str, RawTensor],
              metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Writes tensors in name order, data contiguous, header padded with spaces to 8 bytes."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    order = sorted(tensors)
    for name in order:
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name in order:
            f.write(tensors[name].data)
    return path


# --------------------------------------------------------------------------------------------
# DeepSeek-V3 block-scaled fp8 weights
# --------------------------------------------------------------------------------------------

SCALE_SUFFIX = "_scale_inv"


def block_scale_shape(shape: Tuple[int, int], block=(128, 128)) -> Tuple[int, int]:
    return (-(-shape[0] // block[0]), -(-shape[1] // block[1]))


def expand_block_scales(scales: torch.Tensor, shape: Tuple[int, int],
                        block=(128, 128)) -> torch.Tensor:
    """[ceil(out/bo), ceil(in/bi)] -> [out, in]: element (i, j) gets scales[i // bo, j // bi]."""
    full = scales.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def dequantize(tensors: Mapping[str, RawTensor], block=(128, 128)) -> Dict[str, torch.Tensor]:
    """{name: float64 tensor} for every tensor but the scales: an F8_E4M3 `W` is its decoded
    codes times the F32 `W_scale_inv` of its 128x128 block (DeepSeek's `weight_dequant`, done
    exactly in float64); every other tensor is its stored values widened to float64."""
    out: Dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if t.dtype != "F8_E4M3":
            out[name] = t.to_float64()
            continue
        sname = name + SCALE_SUFFIX
        if sname not in tensors:
            raise KeyError(f"fp8 tensor {name} has no {sname}")
        s = tensors[sname]
        assert len(t.shape) == 2, (name, t.shape)
        assert s.shape == block_scale_shape(t.shape, block), (sname, s.shape, t.shape)
        out[name] = t.to_float64() * expand_block_scales(s.to_float64(), t.shape, block)
    return out


# --------------------------------------------------------------------------------------------
# Hugging Face sharded checkpoints
# --------------------------------------------------------------------------------------------

INDEX_NAME = "model.safetensors.index.json"


def split_into_shards(path, directory, n: int, prefix: str = "model") -> Path:
    """Splits one safetensors file into n shards `{prefix}-0000i-of-0000n.safetensors` in
    `directory` plus `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map":
    {tensor: shard file name}}), as transformers' save_pretrained lays them out. Tensors go to
    shards round-robin in name order, so a weight and its `_scale_inv` usually land in different
    shards. Returns the index path."""
    tensors, meta = read_raw(path)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    assert 1 <= n <= len(names), (n, len(names))
    weight_map = {}
    for i in range(n):
        shard = f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {name: tensors[name] for name in names[i::n]}
        write_raw(directory / shard, part, meta or {"format": "pt"})
        weight_map.update({name: shard for name in part})
    total = sum(len(t.data) for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    ipath = directory / INDEX_NAME
    ipath.write_text(json.dumps(index, indent=2))
    return ipath
