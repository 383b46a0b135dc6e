# SPDX-License-Identifier: Apache-2.0
"""attn's safetensors reader against the official one, file by file.

Every seed of the fuzz corpus (tests/fuzz/corpus/safetensors) and every hostile case below is
opened by attn (the test program attn_safetensors_check, which runs SafetensorsFile::Open and
reads every tensor) and by the official `safetensors` package (safe_open + get_slice of every
tensor). They must agree: a file one accepts the other accepts, a file one rejects the other
rejects. Two kinds of disagreement are deliberate and listed (docs/reference.md, "Limits and
hostile input"):

- UNSUPPORTED: a valid file holding a dtype attn does not read (F8_*, I8, U16, C64, ...). attn
  exits 3 (Error kUnsupported); the official reader accepts.
- ATTN_STRICTER: attn refuses what the official reader lets through: duplicate keys (the
  official reader keeps the last of two identical tensor entries), more than 64 dimensions, more
  than 2^18 tensors.

The program is $ATTN_SAFETENSORS_CHECK, default: next to $ATTN_BIN, else <repo>/build.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEEDS = REPO / "tests" / "fuzz" / "corpus" / "safetensors"


def checker_path() -> Path:
    env = os.environ.get("ATTN_SAFETENSORS_CHECK")
    if env:
        return Path(env)
    attn_bin = os.environ.get("ATTN_BIN")
    base = Path(attn_bin).parent if attn_bin else REPO / "build"
    return base / "attn_safetensors_check"


@pytest.fixture(scope="module")
def checker() -> Path:
    path = checker_path()
    assert path.is_file(), (f"{path} not found: build the attn_safetensors_check target or set "
                            "ATTN_SAFETENSORS_CHECK")
    return path


def framed(header, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def entry(begin, end, shape=(2,), dtype="F32") -> str:
    return json.dumps({"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]})


def hostile_cases() -> dict:
    e8 = b"\0" * 8
    many = ",".join(f'"{i}":' + entry(0, 0, (0,)) for i in range((1 << 18) + 1))
    return {
        "valid": framed('{"a":%s}' % entry(0, 8), e8),
        "valid_metadata_null": framed('{"__metadata__":null}'),
        "valid_empty_at_boundaries": framed(
            '{"a":%s,"b":%s,"c":%s}' % (entry(0, 8), entry(0, 0, (0,)), entry(8, 8, (0, 5))), e8),
        "valid_leading_and_trailing_space": framed(' {"a":%s} \n\t' % entry(0, 8), e8),
        "valid_unknown_key_in_entry": framed(
            '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":[1]}}', e8),
        "valid_nul_in_name": framed('{"a\\u0000":%s}' % entry(0, 8), e8),
        "valid_rank_20": framed('{"a":%s}' % entry(0, 8, [1] * 19 + [2]), e8),
        "unsupported_f8": framed('{"a":%s}' % entry(0, 8, (8,), "F8_E4M3"), e8),
        "unsupported_c64": framed('{"a":%s}' % entry(0, 8, (1,), "C64"), e8),
        "unsupported_f4": framed('{"a":%s}' % entry(0, 2, (4,), "F4"), b"\0\0"),
        "f4_partial_byte": framed('{"a":%s}' % entry(0, 2, (3,), "F4"), b"\0\0"),
        "bad_dtype": framed('{"a":%s}' % entry(0, 8, (8,), "Q9"), e8),
        "duplicate_name_different": framed(
            '{"a":%s,"a":%s}' % (entry(0, 4, (1,)), entry(4, 8, (1,))), e8),
        "duplicate_field": framed(
            '{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', e8),
        "duplicate_metadata": framed('{"__metadata__":{},"__metadata__":{}}'),
        "trailing_bytes": framed('{"a":%s}' % entry(0, 8), e8 + b"x"),
        "empty_with_data": framed("{}", e8),
        "gap": framed('{"a":%s,"b":%s}' % (entry(0, 4, (1,)), entry(8, 12, (1,))), b"\0" * 12),
        "first_not_at_zero": framed('{"a":%s}' % entry(4, 12), b"\0" * 12),
        "overlap": framed('{"a":%s,"b":%s}' % (entry(0, 8), entry(4, 12)), b"\0" * 12),
        "empty_inside_other": framed('{"a":%s,"b":%s}' % (entry(0, 8), entry(4, 4, (0,))), e8),
        "size_mismatch": framed('{"a":%s}' % entry(0, 8, (3,)), e8),
        "offsets_past_end": framed('{"a":%s}' % entry(0, 16, (4,)), e8),
        "end_before_begin": framed('{"a":%s}' % entry(8, 0, (0,)), e8),
        "misaligned_header": framed('{"a":%s}' % entry(0, 8) + "   ", e8),
        "trailing_garbage": framed('{"a":%s}x' % entry(0, 8), e8),
        "nul_padding": framed('{"a":%s}\0' % entry(0, 8), e8),
        "bom": framed(b"\xef\xbb\xbf{}"),
        "non_utf8_name": framed(b'{"\xff":' + entry(0, 8).encode() + b"}", e8),
        "lone_surrogate": framed('{"\\ud800":%s}' % entry(0, 8), e8),
        "float_extent": framed('{"a":%s}' % entry(0, 8, (2.0,)), e8),
        "negative_extent": framed('{"a":%s}' % entry(0, 0, (-1,)), b""),
        "huge_shape_overflow": framed('{"a":%s}' % entry(0, 8, (1 << 62, 1 << 62)), e8),
        "extent_1e400": framed('{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}}'),
        "deep_nesting": framed('{"a":{"dtype":"F32","shape":' + "[" * 100000 + "]" * 100000 +
                               ',"data_offsets":[0,0]}}'),
        "rank_65": framed('{"a":%s}' % entry(0, 4, [1] * 65), b"\0" * 4),
        "too_many_tensors": framed("{" + many + "}"),
        "metadata_not_string": framed('{"__metadata__":{"k":1}}'),
        "metadata_nested": framed('{"__metadata__":{"k":{"x":"y"}}}'),
        "not_object": framed("[]"),
        "entry_not_object": framed('{"a":1}'),
        "missing_shape": framed('{"a":{"dtype":"F32","data_offsets":[0,8]}}', e8),
        "null_offsets": framed('{"a":{"dtype":"F32","shape":[0],"data_offsets":null}}'),
        "empty_header": framed(""),
        "short_file": b"\x01\x02\x03",
        "header_length_past_end": struct.pack("<Q", 100) + b"{}",
        "header_length_huge": struct.pack("<Q", 1 << 63) + b"{}",
    }


# attn stricter than the official reader, on purpose (see the module docstring).
ATTN_STRICTER = {"duplicate_metadata_identical", "duplicate_name_identical", "rank_65",
                 "too_many_tensors"}


def extra_stricter_cases() -> dict:
    e = entry(0, 8)
    return {
        "duplicate_name_identical": framed('{"a":%s,"a":%s}' % (e, e), b"\0" * 8),
        "duplicate_metadata_identical": framed('{"__metadata__":{"k":"v","k":"v"}}'),
    }


def official_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                f.get_slice(name)
        return True
    except Exception:  # noqa: BLE001 - any refusal counts
        return False


def attn_verdict(checker: Path, path: Path) -> int:
    proc = subprocess.run([str(checker), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 2, 3), (
        f"attn_safetensors_check {path.name}: exit {proc.returncode} (a crash or an escaped "
        f"exception)\nstderr: {proc.stderr[-2000:]}")
    # Messages quote hostile values as excerpts only.
    assert len(proc.stderr) < 4000, f"{path.name}: {len(proc.stderr)}-byte message"
    return proc.returncode


def all_cases():
    cases = {f"seed:{p.name}": p.read_bytes() for p in sorted(SEEDS.iterdir())}
    cases.update(hostile_cases())
    cases.update(extra_stricter_cases())
    return cases


CASES = all_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_official_reader(checker, tmp_path, name):
    path = tmp_path / "case.safetensors"
    path.write_bytes(CASES[name])
    official = official_accepts(path)
    verdict = attn_verdict(checker, path)
    if name in ATTN_STRICTER:
        assert official and verdict == 2, f"{name}: official {official}, attn exit {verdict}"
    elif verdict == 3:
        assert official, f"{name}: attn calls it valid but unsupported; official rejects it"
    else:
        assert (verdict == 0) == official, (
            f"{name}: official {'accepts' if official else 'rejects'}, attn exit {verdict}")
