# SPDX-License-Identifier: Apache-2.0
"""Regressions found by fuzzing the array intake (tests/fuzz/fuzz_array_intake.py, run by
scripts/fuzz-python.sh): hostile inputs give ValueError or TypeError, never a RuntimeError, an
out-of-bounds read or a silently discarded output.

The forged __array_interface__ dicts below always point at a live NumPy buffer large enough for
what they claim: the intake trusts the pointer as NumPy does (docs/python.md), and only the
form of the dict is under test.
"""

from __future__ import annotations

import numpy as np
import pytest

RNG = np.random.default_rng(11)


def qkv(B=1, S=2, H=2, D=4):
    return [RNG.standard_normal((B, S, H, D)).astype(np.float32) for _ in range(3)]


class Forged(np.ndarray):
    """An ndarray whose __array_interface__ is replaced: the intake reads such a dict itself
    (numpy.asarray would ignore the override)."""

    @property
    def __array_interface__(self):
        return self._interface


def forged(**changes):
    """A [1, 2, 2, 4] float32 claim on a real buffer, with `changes` applied (None deletes)."""
    buffer = RNG.standard_normal(64).astype(np.float32)
    interface = {"version": 3, "typestr": "<f4", "shape": (1, 2, 2, 4),
                 "data": (buffer.ctypes.data, False), "strides": None}
    for key, value in changes.items():
        if value is None:
            del interface[key]
        else:
            interface[key] = value
    obj = np.zeros(1, np.float32).view(Forged)
    obj._interface = interface
    obj._buffer = buffer
    return obj


def test_forged_interface_well_formed_is_read(attn):
    """The control: a sound forged dict is read like the array it describes."""
    q, k, v = qkv()
    obj = forged()
    expected = np.frombuffer(obj._buffer, np.float32, 16).reshape(1, 2, 2, 4)
    np.testing.assert_array_equal(attn.attention(obj, k, v), attn.attention(expected, k, v))


@pytest.mark.parametrize("changes", [
    {"strides": (32, 16, 4)},             # one stride short: was indexed past the end
    {"strides": (64, 32, 16, 4, 4)},      # one stride too many
    {"strides": [64, 32, 16, 4]},         # not a tuple
    {"typestr": None},                    # missing
    {"shape": None},
    {"data": None},
    {"typestr": 3},                       # was RuntimeError (failed pybind11 cast)
    {"shape": (1, 2, 2.5, 4)},
    {"shape": [1, 2, 2, 4]},
    {"shape": (1, -2, 2, 4)},             # negative extent
    {"shape": (1, 2, 2, 1 << 64)},        # not an int64
    {"data": bytes(8)},                   # was turned into the pointer 0x0 by tuple(bytes)
    {"data": (0,)},
    {"data": ("0", False)},
    {"data": (-1, False)},                # not a pointer: was RuntimeError
    {"data": (0, "no")},
])
def test_forged_interface_malformed_is_refused(attn, changes):
    q, k, v = qkv()
    obj = forged(**changes)
    with pytest.raises(ValueError, match="malformed __array_interface__"):
        attn.attention(obj, k, v)


@pytest.mark.parametrize("scale", ["0.5", complex(1, 1), 1 << 1100, [0.5]])
def test_scale_of_wrong_type_is_type_error(attn, scale):
    """A scale that is not a real number was RuntimeError (a failed pybind11 cast)."""
    q, k, v = qkv()
    with pytest.raises(TypeError, match="scale"):
        attn.attention(q, k, v, scale=scale)
    with pytest.raises(TypeError, match="scale"):
        attn.mla_attention(q, k[:, :, 0], 2, scale=scale)


def test_out_record_field_view_is_refused(attn):
    """out= whose strides are not whole float32 elements (a record field) used to be copied
    like an input; the output went into the copy and the caller's array was never written."""
    q, k, v = qkv()
    record = np.zeros(q.shape, [("pad", "u1"), ("x", "<f4")])
    out = record["x"]
    assert out.flags.writeable and out.strides[-1] == 5
    with pytest.raises(ValueError, match="out: expected a writable C-contiguous float32"):
        attn.attention(q, k, v, out=out)
    assert not out.any()


class PlainInterface:
    """Not an ndarray: an object exposing only __array_interface__, which NumPy builds from."""

    def __init__(self, interface):
        self.__array_interface__ = interface


@pytest.mark.parametrize("typestr", ["|O", "<c8", ">f4", "|V8"])
def test_plain_interface_of_unread_dtype_is_refused_before_numpy(attn, typestr):
    """An object-dtype dict without 'data' made NumPy 2.4 build an array that crashed the
    interpreter in garbage collection (fuzzing found it): attn refuses a typestr it does not
    read before NumPy sees the dict. Repeated, because the crash came at a later collection."""
    import gc
    q, k, v = qkv()
    for _ in range(50):
        obj = PlainInterface({"version": 3, "typestr": typestr, "shape": (1, 0, 2, 4),
                              "strides": (160, 160, 40, 8)})
        with pytest.raises(ValueError, match="unsupported dtype in __array_interface__"):
            attn.attention(obj, k, v)
    gc.collect()


def test_plain_interface_of_read_dtype_goes_through_numpy(attn):
    """The control: a sound dict on a plain object is read like the array it describes."""
    q, k, v = qkv()
    obj = PlainInterface({"version": 3, "typestr": "<f4", "shape": q.shape,
                          "data": (q.ctypes.data, False)})
    obj.keep = q
    np.testing.assert_array_equal(attn.attention(obj, k, v), attn.attention(q, k, v))
