#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Coverage-guided fuzzing (atheris) of the attn module's array intake.

Every call below hands attn hostile arrays and options; the contract checked is:

- attn raises ValueError or TypeError for anything it does not accept. Also allowed:
  MemoryError and OverflowError (NumPy or the allocator refusing a size that does not fit:
  a huge broadcast view is a legal array whose output cannot be allocated), BufferError
  (NumPy's own __dlpack__ refusing to export, e.g. a read-only array) and HostileError (this
  harness's objects raising from __array_interface__ / __dlpack__: the caller's own exception
  must come through unchanged). Anything else (RuntimeError from a failed pybind11 cast,
  KeyError for a missing dict key, SystemError, ...) is a finding, and so is a crash or a hang
  (scripts/fuzz-python.sh gives libFuzzer -timeout).
- A call that returns gives the documented result: shape [B, Sq, H, Dv] (layers: the shape of
  hidden_states), float32, finite when check_finite=True, equal to a float64 reference within
  float32 rounding when the inputs are ordinary finite float arrays, the out= array itself when
  one was given, and the inputs unchanged.
- An __array_interface__ that is malformed in a way checkable without touching memory
  (missing keys, 'data' not a (pointer, read-only) tuple, a negative extent, strides of another
  rank, non-integer entries) must be refused, never read.

What the intake trusts, and therefore what this harness never forges: the data pointer of an
__array_interface__ or of a DLPack tensor, together with the shape, strides, item size and byte
offset it is claimed with, is trusted exactly as NumPy trusts it (NumPy cannot check it
either). So every pointer this harness hands over is the address of a live NumPy buffer at
least as large as the bytes the claim can reach; bogus values appear only where the intake must
reject them before dereferencing (a negative or non-integer "pointer", an unsupported dtype).
Logical sizes stay small (a few thousand elements): reading a legal broadcast view costs time
proportional to its logical size, as in NumPy, so a 2**40-element view is slow, not a bug.

Run: scripts/fuzz-python.sh [SECONDS] [VENV] [BUILD_PYTHON_DIR]
(or directly: PYTHONPATH=build/python build-venv/bin/python tests/fuzz/fuzz_array_intake.py
 tests/fuzz/corpus/array_intake -max_total_time=60).
"""

from __future__ import annotations

import ctypes
import math
import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    import attn


class HostileError(Exception):
    """Raised by this harness's own objects; attn must let it through unchanged."""


class Finding(AssertionError):
    """A broken contract: uncaught, so libFuzzer records the input as a crash."""


ALLOWED = (ValueError, TypeError, MemoryError, OverflowError, BufferError, HostileError)

# Tiny layers, built once (random weights are deterministic).
GQA_CONFIG = {
    "model_type": "llama", "hidden_size": 16, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 8, "num_hidden_layers": 1,
    "max_position_embeddings": 64, "rope_theta": 10000.0,
}
MLA_CONFIG = {
    "model_type": "deepseek_v2", "hidden_size": 16, "num_attention_heads": 2,
    "num_key_value_heads": 2, "num_hidden_layers": 1, "q_lora_rank": None,
    "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "rope_theta": 10000, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
}
LAYERS = [attn.Attention.random(GQA_CONFIG, seed=1), attn.Attention.random(MLA_CONFIG, seed=2)]

# Dtypes: the ones attn reads, then ones it must refuse (non-native order, complex, object,
# strings, dates, structured records, void).
DTYPES = [np.dtype(t) for t in (
    "<f4", "<f2", "<f8", "<i8", "<i4", "<i2", "i1", "u1", "?",
    ">f4", ">f8", ">i8", "<u2", "<u4", "<u8", "<c8", "<c16", "O", "U3", "S2", "V4",
    "M8[s]", "m8[s]")] + [np.dtype([("a", "<f4"), ("b", "<f4")]), np.dtype([("a", "<f2")])]
FLOAT_DTYPES = {np.dtype("<f4"), np.dtype("<f2"), np.dtype("<f8")}
SPECIALS = [math.nan, math.inf, -math.inf, 1e30, -1e30, 65504.0, 7e4, 1e-45, -0.0, 0.0, 1.0,
            3.5e38, 1e308, -1.0, 2.0]

# Typestrs for forged interfaces: supported, non-native, odd kinds, malformed.
TYPESTRS = ["<f4", "<f2", "<f8", "<i8", "|u1", "|b1", "|i1", "=f4", "|f4", ">f4", "<c8", "|O",
            "|V8", "f4", "", "<f16", "<f3", "<f40", "<u2", "<M8[s]"]

# Parameters of one call that are "right" (mutations move away from them).
MAX_ELEMENTS = 4096


def pick(fdp, options):
    return options[fdp.ConsumeIntInRange(0, len(options) - 1)]


def small_shape(fdp, rank):
    return tuple(fdp.ConsumeIntInRange(0, 4) for _ in range(rank))


def mutate_shape(fdp, shape):
    """Mostly the shape asked for; sometimes another rank, a zero, or a different extent."""
    choice = fdp.ConsumeIntInRange(0, 9)
    if choice <= 5:
        return tuple(shape)
    if choice == 6:
        return small_shape(fdp, fdp.ConsumeIntInRange(0, 5))
    shape = list(shape)
    if shape:
        axis = fdp.ConsumeIntInRange(0, len(shape) - 1)
        shape[axis] = fdp.ConsumeIntInRange(0, 5) if choice != 9 else 0
    return tuple(shape)


def values(fdp, shape, mode):
    count = math.prod(shape)
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 1 << 16))
    if mode == 0:  # ordinary
        data = rng.standard_normal(count)
    elif mode == 1:  # 0/1 flags (masks)
        data = rng.integers(0, 2, count).astype(np.float64)
    elif mode == 2:  # small integers, some outside 0/1
        data = rng.integers(-3, 4, count).astype(np.float64)
    else:  # ordinary with special values injected
        data = rng.standard_normal(count) * pick(fdp, [1.0, 1e3, 1e30])
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            if count:
                data[fdp.ConsumeIntInRange(0, count - 1)] = pick(fdp, SPECIALS)
    return data.reshape(shape)


def cast(data, dtype):
    with np.errstate(all="ignore"):
        try:
            if dtype.names:
                out = np.zeros(data.shape, dtype)
                out[dtype.names[0]] = data
                return out
            return data.astype(dtype)
        except (TypeError, ValueError):
            return np.zeros(data.shape, dtype)


def strided(fdp, array):
    """`array`'s values through 0-3 layout changes that keep them: steps, transposes, negative
    strides, Fortran order, an offset into a larger buffer, a record field (strides that are
    not whole elements). Or a broadcast view (zero strides; values repeat along an axis)."""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        shape = array.shape
        how = fdp.ConsumeIntInRange(0, 6)
        if how == 0 and array.ndim:  # steps
            axis = fdp.ConsumeIntInRange(0, array.ndim - 1)
            step = fdp.ConsumeIntInRange(2, 3)
            big = list(shape)
            big[axis] *= step
            base = np.zeros(big, array.dtype)
            index = [slice(None)] * array.ndim
            index[axis] = slice(None, None, step)
            base[tuple(index)] = array
            array = base[tuple(index)]
        elif how == 1 and array.ndim > 1:  # transpose
            perm = list(range(array.ndim))
            fdp_perm = [fdp.ConsumeIntInRange(0, 1 << 8) for _ in perm]
            perm.sort(key=lambda a: fdp_perm[a])
            array = np.ascontiguousarray(array.transpose(perm)).transpose(np.argsort(perm))
        elif how == 2 and array.ndim:  # negative strides
            axis = fdp.ConsumeIntInRange(0, array.ndim - 1)
            array = np.flip(np.flip(array, axis).copy(), axis)
        elif how == 3:
            array = np.asfortranarray(array)
        elif how == 4:  # offset into a larger buffer
            base = np.zeros(tuple(n + 1 for n in shape), array.dtype)
            inner = (Ellipsis,) + tuple(slice(1, None) for _ in shape)  # 0-d stays an array
            base[inner] = array
            array = base[inner]
        elif how == 5 and array.dtype.names is None and array.dtype != object:  # record field
            record = np.zeros(shape, [("pad", "u1"), ("x", array.dtype)])
            record["x"] = array
            array = record["x"]
        elif how == 6 and array.ndim:  # broadcast
            axis = fdp.ConsumeIntInRange(0, array.ndim - 1)
            array = np.broadcast_to(array.take([0], axis=axis) if shape[axis] else array, shape)
    return array


def make_array(fdp, shape, value_mode=0):
    """A NumPy array of about `shape`: any dtype, any layout, maybe read-only."""
    shape = mutate_shape(fdp, shape)
    dtype = DTYPES[0] if fdp.ConsumeIntInRange(0, 2) else pick(fdp, DTYPES)
    array = strided(fdp, cast(values(fdp, shape, value_mode), dtype))
    if fdp.ConsumeIntInRange(0, 4) == 0 and array.flags.writeable:
        array.flags.writeable = False
    return array


# ---- forged __array_interface__ -----------------------------------------------------------

def item_size(typestr):
    try:
        return max(np.dtype(typestr).itemsize, 1)
    except (TypeError, ValueError):
        return 16  # unparseable: size the buffer for the largest item


def reach(shape, strides, item):
    """(lowest, highest) byte offsets a claim can touch relative to its pointer, or None when
    the claim is not a list of non-negative ints (it must then be refused before any read)."""
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    if strides is None:
        strides = []
        step = item
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
    if not isinstance(strides, tuple | list) or len(strides) != len(shape):
        return None
    if not all(type(s) is int for s in strides):
        return None
    if 0 in shape:
        return (0, 0)
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    high = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + item
    return low, high


class Iface:
    """A plain object exposing a dict: numpy.asarray reads it (NumPy validates what it can)."""

    def __init__(self, interface, keep):
        self._interface = interface
        self._keep = keep  # the buffer the pointer points into

    @property
    def __array_interface__(self):
        if self._interface is None:
            raise HostileError("__array_interface__")
        return self._interface


class IfaceArray(np.ndarray):
    """An ndarray whose __array_interface__ is overridden: attn reads the dict itself, so every
    structural check is attn's own."""

    @property
    def __array_interface__(self):
        if self._interface is None:
            raise HostileError("__array_interface__")
        return self._interface


def forged(fdp, shape):
    """(object, malformed): an object with a hostile __array_interface__ claiming about
    `shape`, and whether the claim is malformed so that attn itself must refuse it."""
    shape = list(mutate_shape(fdp, shape))
    typestr = "<f4" if fdp.ConsumeIntInRange(0, 2) else pick(fdp, TYPESTRS)
    item = item_size(typestr)
    strides = None
    malformed = bad_shape = False
    if fdp.ConsumeBool():  # explicit strides: zero, negative, padded, unaligned
        strides = []
        step = item
        for n in reversed(shape):
            strides.insert(0, pick(fdp, [step, step, 0, -step, 2 * step, step + 1, -1]))
            step *= max(n, 1)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        how = fdp.ConsumeIntInRange(0, 5)
        if how == 0 and shape:
            shape[fdp.ConsumeIntInRange(0, len(shape) - 1)] = pick(fdp, [-1, -(1 << 62)])
            malformed = bad_shape = True
        elif how == 1 and strides is not None:
            # Judged after the loop: dropping the last stride and then appending `item` can give
            # back a sound claim (a report of exactly that was this harness's own mistake).
            strides = strides[:-1] if strides and fdp.ConsumeBool() else strides + [item]
        elif how == 2 and shape:
            # Zero strides make a huge extent legal: overflowing counts must be refused.
            axis = fdp.ConsumeIntInRange(0, len(shape) - 1)
            shape[axis] = pick(fdp, [1 << 62, 1 << 63, (1 << 64) + 1])
            strides = [0] * len(shape)
            if len(shape) < 2 or shape[axis] >= 1 << 63:
                # Not a multi-axis overflow: keep the logical size small or overflowing.
                shape.append(pick(fdp, [1 << 62, 2]))
                strides.append(0)
        elif how == 3 and shape:
            shape[fdp.ConsumeIntInRange(0, len(shape) - 1)] = pick(fdp, [2.5, "3", None])
            malformed = bad_shape = True
        elif how == 4 and strides:
            strides[fdp.ConsumeIntInRange(0, len(strides) - 1)] = pick(fdp, [1.5, None, "8"])
            malformed = True
    if strides is not None and len(strides) != len(shape):
        malformed = True
    shape = tuple(shape)
    how = fdp.ConsumeIntInRange(0, 9)  # a last change to the dict, made below
    if how == 1:
        strides = None  # no 'strides' entry: C order (decided before sizing the buffer)
        malformed = bad_shape
    span = reach(shape, strides, item)
    if span is not None and (span[1] - span[0] > 1 << 20 or (
            math.prod(shape) > MAX_ELEMENTS and math.prod(shape) < 1 << 63)):
        # Memory this harness will not back, or a legal logical size too slow to walk: only
        # sizes past int64 stay (they must be refused before anything is read).
        span = None
    if span is None and not malformed:
        shape, strides, span = (2, 2), None, (0, 4 * 4)  # fall back to a small sound claim
        typestr, item = "<f4", 4
    low, high = span if span is not None else (0, 64)
    buffer = values(fdp, (max(high - low, 1) // 8 + 2,), 0)  # float64 words, >= the reach
    pointer = buffer.ctypes.data - low
    readonly = fdp.ConsumeBool()
    interface = {"version": 3, "typestr": typestr, "shape": shape, "data": (pointer, readonly),
                 "strides": None if strides is None else tuple(strides)}
    if isinstance(shape, tuple) and any(type(n) is int and n >= 1 << 63 for n in shape):
        malformed = True  # not an int64 extent
    # Decided here: a bogus int pointer may go only where attn parses the dict itself. NumPy
    # takes any int as an address, (-1, False) included, and attn then trusts NumPy's array.
    through_numpy = fdp.ConsumeBool()
    if how == 0:
        del interface[pick(fdp, ["typestr", "shape", "data"])]
        malformed = True
    elif how == 1:
        del interface["strides"]
    elif how == 2:
        interface["data"] = pick(fdp, [[pointer, readonly], bytes(8), None, (pointer,),
                                       (pointer, readonly, 0), ("0", False), (1 << 64, False),
                                       7] + ([] if through_numpy else [(-1, False)]))
        malformed = True
    elif how == 3:
        interface["version"] = pick(fdp, [2, 4, 0, "3", None])
    elif how == 4:
        interface["descr"] = pick(fdp, [[("", "<f8")], "bogus", [("a", "<f4"), ("b", "<f4")]])
    elif how == 5:
        interface["typestr"] = pick(fdp, [3, None, b"<f4"])
        malformed = True
    elif how == 6:
        interface["shape"] = pick(fdp, [3, None, [2, 2], "22"])
        malformed = True
    if fdp.ConsumeIntInRange(0, 15) == 0:
        interface = None  # the property raises
    if through_numpy:
        return Iface(interface, buffer), False  # numpy.asarray decides; NumPy is not tested here
    obj = np.zeros(1, np.float32).view(IfaceArray)
    obj._interface = interface
    obj._keep = buffer
    return obj, malformed


# ---- forged DLPack capsules ------------------------------------------------------------------

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    # No deleter: the harness owns every piece and keeps it alive past the call.
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


PyCapsule_New = ctypes.pythonapi.PyCapsule_New
PyCapsule_New.restype = ctypes.py_object
PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
CAPSULE_NAMES = [b"dltensor", b"dltensor_versioned", b"used_dltensor", b"x"]  # kept alive
DL_TYPES = [(2, 32, 1), (2, 16, 1), (2, 64, 1), (4, 16, 1), (0, 64, 1), (1, 8, 1), (6, 8, 1),
            (2, 32, 4), (2, 8, 1), (5, 64, 1), (0, 128, 1)]


class Producer:
    """An object with __dlpack__: a real NumPy export, a forged capsule, or no capsule."""

    def __init__(self, make):
        self._make = make

    def __dlpack__(self, stream=None):
        return self._make()


def dlpack(fdp, shape):
    """(object, malformed) like forged(), through __dlpack__."""
    how = fdp.ConsumeIntInRange(0, 4)
    if how == 0:
        array = make_array(fdp, shape)
        return Producer(lambda: array.__dlpack__()), False
    if how == 1:
        not_a_capsule = pick(fdp, [None, 3, "dltensor", b"x", np.zeros(2, np.float32)])
        return Producer(lambda: not_a_capsule), True
    if how == 2:
        def raising():
            raise HostileError("__dlpack__")
        return Producer(raising), False
    shape = list(mutate_shape(fdp, shape))
    malformed = False
    code, bits, lanes = DL_TYPES[0] if fdp.ConsumeIntInRange(0, 2) else pick(fdp, DL_TYPES)
    item = max(bits * lanes // 8, 1)
    strides = None
    if fdp.ConsumeBool():
        strides = []
        step = 1
        for n in reversed(shape):
            strides.insert(0, pick(fdp, [step, 0, -step, 2 * step]))
            step *= max(n, 1)
    if shape and fdp.ConsumeIntInRange(0, 5) == 0:
        shape[fdp.ConsumeIntInRange(0, len(shape) - 1)] = -1
        malformed = True
    ndim = len(shape)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        ndim = pick(fdp, [-1, -(1 << 31)])
        malformed = True
    span = reach(tuple(shape), None if strides is None else [s * item for s in strides], item)
    low, high = span if span is not None else (0, 64)
    buffer = values(fdp, (max(high - low, 1) // 8 + 2,), 0)
    offset = fdp.ConsumeIntInRange(0, 8) * item
    managed = DLManagedTensor()
    tensor = managed.dl_tensor
    tensor.data = buffer.ctypes.data - low - offset
    tensor.byte_offset = offset
    tensor.device = DLDevice(1 if fdp.ConsumeIntInRange(0, 5) else pick(fdp, [2, 0, 13]), 0)
    tensor.dtype = DLDataType(code, bits, lanes)
    tensor.ndim = ndim
    shape_array = (ctypes.c_int64 * max(len(shape), 1))(*shape)
    tensor.shape = ctypes.cast(shape_array, ctypes.POINTER(ctypes.c_int64))
    strides_array = None
    if strides is not None:
        strides_array = (ctypes.c_int64 * max(len(strides), 1))(*strides)
        tensor.strides = ctypes.cast(strides_array, ctypes.POINTER(ctypes.c_int64))
    name = CAPSULE_NAMES[0] if fdp.ConsumeIntInRange(0, 5) else pick(fdp, CAPSULE_NAMES)
    malformed = malformed or name != b"dltensor"
    keep = (buffer, managed, shape_array, strides_array)
    producer = Producer(lambda: PyCapsule_New(ctypes.addressof(managed), name, None))
    producer._keep = keep
    return producer, malformed


def make_input(fdp, shape, value_mode=0):
    """(object, malformed): mostly an array of about `shape`, else anything at all."""
    kind = fdp.ConsumeIntInRange(0, 15)
    if kind <= 8:
        return make_array(fdp, shape, value_mode), False
    if kind == 9:
        return make_array(fdp, shape, value_mode).tolist(), False
    if kind == 10:
        return pick(fdp, [None, 1.5, 3, True, "q", b"q", {}, object(), np.float32(1),
                          [[1, 2], [3]], (), [], np.ma.masked_array([1.0], [True])]), False
    if kind == 11:
        return make_array(fdp, shape, value_mode).view(np.ma.MaskedArray), False
    if kind <= 13:
        return forged(fdp, shape)
    return dlpack(fdp, shape)


# ---- checks ----------------------------------------------------------------------------------

def plain(obj):
    """obj as an ndarray when it is an ordinary NumPy array or list of numbers, else None."""
    if type(obj) is np.ndarray:
        return obj
    if isinstance(obj, list):
        try:
            array = np.asarray(obj)
        except ValueError:
            return None
        return array if array.dtype.kind in "fiub" else None
    return None


def oracle_ready(array):
    """True for a finite, moderate float array whose result float32 rounding can match."""
    return (array is not None and array.dtype in FLOAT_DTYPES
            and bool(np.all(np.isfinite(array))) and float(np.max(np.abs(array), initial=0)) < 10)


def reference(q, k, v, causal, scale, mask, window):
    """float64 softmax(scale q kᵀ) v with the documented visibility; empty rows give 0."""
    q, k, v = (np.asarray(a).astype(np.float32).astype(np.float64) for a in (q, k, v))
    B, Sq, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    k = np.repeat(k, H // G, axis=2)
    v = np.repeat(v, H // G, axis=2)
    scores = np.einsum("bshd,bthd->bhst", q, k) * np.float64(np.float32(scale))
    visible = np.ones((B, 1, Sq, T), bool)
    slots = np.arange(Sq)[:, None] + (T - Sq)
    keys = np.arange(T)[None, :]
    if causal:
        visible &= keys <= slots
        if window:
            visible &= keys > slots - window
    if mask is not None:
        visible &= np.asarray(mask).astype(bool)[:, None, None, :]
    scores = np.where(visible, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
    weights = np.where(visible, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhst,bthd->bshd", weights, v)


def snapshot(objects):
    return [(o, np.array(o, copy=True)) for o in objects
            if type(o) is np.ndarray and o.dtype.kind in "fiub" and o.size <= MAX_ELEMENTS]


def check_unchanged(saved):
    for obj, before in saved:
        if not np.array_equal(obj, before, equal_nan=True):
            raise Finding("an input array was modified")


LAST_CALL = None  # (fn, args, kwargs): a Finding raised after the call names it


def describe(fn, args, kwargs):
    def one(x):
        if isinstance(x, np.ndarray):
            return (f"{type(x).__name__}(shape={x.shape}, dtype={x.dtype}, strides={x.strides}, "
                    f"writeable={x.flags.writeable}, interface={getattr(x, '_interface', '-')})")
        if isinstance(x, Iface):
            return f"Iface({x._interface})"
        return repr(x)[:200]
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return f"call: {getattr(fn, '__name__', fn)}(" + ", ".join(parts) + ")"


def call(fn, malformed, *args, **kwargs):
    """fn(*args, **kwargs), or None when it raised an allowed exception. A malformed forged
    input that is accepted is a finding."""
    global LAST_CALL
    LAST_CALL = (fn, args, kwargs)
    try:
        result = fn(*args, **kwargs)
    except ALLOWED:
        return None
    except BaseException as error:
        # atheris prints only the traceback: say which call it was.
        print(describe(fn, args, kwargs), file=sys.stderr)
        raise
    if malformed:
        raise Finding("a malformed __array_interface__ / DLPack tensor was accepted\n"
                      + describe(fn, args, kwargs))
    return result


def options(fdp):
    """causal, scale and check_finite: mostly sensible, sometimes anything."""
    causal = fdp.ConsumeBool() if fdp.ConsumeIntInRange(0, 7) else pick(
        fdp, [None, 1, "yes", np.bool_(True), 2.0])
    scale = None if fdp.ConsumeBool() else pick(
        fdp, [0.35, 1.0, 0.0, -1.0, math.nan, math.inf, 1e-45, 1e39, "0.5", [1.0],
              np.float32(0.5), True, 1 << 1000, complex(1, 1), None])
    check_finite = True if fdp.ConsumeIntInRange(0, 3) else pick(fdp, [False, None, 1, "no"])
    return causal, scale, check_finite


def make_out(fdp, shape, inputs):
    """An out= argument: None, the right array, or a wrong one (shape, dtype, read-only,
    strided), or an input array (aliasing)."""
    how = fdp.ConsumeIntInRange(0, 7)
    if how <= 2:
        return None
    if how <= 4:
        return np.full(shape, np.nan, np.float32)
    if how == 5:
        return pick(fdp, [o for o in inputs if isinstance(o, np.ndarray)] or [None])
    obj, _ = make_input(fdp, shape)
    return obj


def fuzz_attention(fdp):
    B, Sq, T = (fdp.ConsumeIntInRange(0, 3) for _ in range(3))
    G = fdp.ConsumeIntInRange(1, 2)
    H = G * fdp.ConsumeIntInRange(1, 2)
    D, Dv = fdp.ConsumeIntInRange(1, 5), fdp.ConsumeIntInRange(1, 5)
    q, bad_q = make_input(fdp, (B, Sq, H, D))
    k, bad_k = make_input(fdp, (B, T, G, D))
    v, bad_v = make_input(fdp, (B, T, G, Dv))
    causal, scale, check_finite = options(fdp)
    window = 0 if fdp.ConsumeBool() else pick(fdp, [1, 2, 5, -1, 1 << 63, None, 1.5])
    mask, bad_mask = (None, False) if fdp.ConsumeBool() else make_input(fdp, (B, T), 1)
    out = make_out(fdp, (B, Sq, H, Dv), [q, k, v])
    saved = snapshot([q, k, v, mask] if out is None else [x for x in (q, k, v, mask)
                                                           if x is not out])
    result = call(attn.attention, bad_q or bad_k or bad_v or bad_mask, q, k, v, causal=causal,
                  scale=scale, attention_mask=mask, window=window, out=out,
                  check_finite=check_finite)
    if result is None:
        return
    check_unchanged(saved)
    qa, ka, va = plain(q), plain(k), plain(v)
    check_result(result, out, check_finite, qa, ka, va)
    ma = plain(mask) if mask is not None else None
    if (all(oracle_ready(a) for a in (qa, ka, va)) and causal in (True, False)
            and (mask is None or (ma is not None and np.isin(ma, (0, 1)).all()))
            and (out is None or (type(out) is np.ndarray and all(out is not x for x in (q, k, v))))
            and type(window) is int):
        s = 1 / math.sqrt(qa.shape[3]) if scale is None else float(scale)
        expected = reference(qa, ka, va, causal, s, ma, window)
        compare(result, expected, "attention")


def fuzz_mla(fdp):
    B, Sq, T = (fdp.ConsumeIntInRange(0, 3) for _ in range(3))
    H, D = fdp.ConsumeIntInRange(1, 3), fdp.ConsumeIntInRange(1, 6)
    value_dim = fdp.ConsumeIntInRange(1, D) if fdp.ConsumeIntInRange(0, 3) else pick(
        fdp, [0, -1, D + 1, 1 << 63, 2.0, None])
    q, bad_q = make_input(fdp, (B, Sq, H, D))
    kv, bad_kv = make_input(fdp, (B, T, D))
    causal, scale, check_finite = options(fdp)
    mask, bad_mask = (None, False) if fdp.ConsumeBool() else make_input(fdp, (B, T), 1)
    Dv = value_dim if type(value_dim) is int and 0 <= value_dim <= 8 else 1
    out = make_out(fdp, (B, Sq, H, Dv), [q, kv])
    saved = snapshot([x for x in (q, kv, mask) if x is not out])
    result = call(attn.mla_attention, bad_q or bad_kv or bad_mask, q, kv, value_dim,
                  causal=causal, scale=scale, attention_mask=mask, out=out,
                  check_finite=check_finite)
    if result is None:
        return
    check_unchanged(saved)
    qa, kva = plain(q), plain(kv)
    check_result(result, out, check_finite, qa, kva[:, :, None, :] if kva is not None else None,
                 kva[:, :, None, :value_dim] if kva is not None else None)
    ma = plain(mask) if mask is not None else None
    if (oracle_ready(qa) and oracle_ready(kva) and causal in (True, False)
            and (mask is None or (ma is not None and np.isin(ma, (0, 1)).all()))
            and (out is None or (type(out) is np.ndarray and out is not q and out is not kv))):
        s = 1 / math.sqrt(qa.shape[3]) if scale is None else float(scale)
        keys = kva[:, :, None, :]
        expected = reference(qa, keys, keys[..., :value_dim], causal, s, ma, 0)
        compare(result, expected, "mla_attention")


def check_result(result, out, check_finite, q, k, v):
    if out is not None and result is not out:
        raise Finding("out= was given but another object was returned")
    if out is not None and type(out) is not np.ndarray:
        return  # a forged out= (DLPack, __array_interface__): its memory was written, not checked
    if not isinstance(result, np.ndarray) or result.dtype != np.float32:
        raise Finding(f"result is not a float32 ndarray: {type(result)}")
    if q is not None and v is not None and q.ndim == 4 and v.ndim == 4:
        want = (q.shape[0], q.shape[1], q.shape[2], v.shape[3])
        if result.shape != want:
            raise Finding(f"result shape {result.shape}, expected {want}")
    if check_finite is True:
        if not np.all(np.isfinite(result)):
            raise Finding("check_finite=True returned a non-finite output")
        for a in (q, k, v):
            if a is not None and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise Finding("check_finite=True accepted a non-finite input")


def compare(result, expected, what):
    # float32 kernels on inputs below 10 in magnitude: scores carry ~1e-6 relative error.
    tolerance = 2e-3 * (1 + float(np.max(np.abs(expected), initial=0)))
    if not np.allclose(result, expected, rtol=2e-3, atol=tolerance):
        worst = float(np.max(np.abs(result - expected)))
        raise Finding(f"{what}: result differs from the float64 reference by {worst}")


def fuzz_layer(fdp):
    layer = pick(fdp, LAYERS)
    B, S = fdp.ConsumeIntInRange(0, 2), fdp.ConsumeIntInRange(0, 3)
    decode = fdp.ConsumeBool()
    width = 16
    shape = ((B, width) if fdp.ConsumeBool() else (B, 1, width)) if decode else (B, S, width)
    x, bad_x = make_input(fdp, shape)
    grid = shape[:-1] if not decode or len(shape) == 3 else (B,)
    positions, bad_p = (None, False) if fdp.ConsumeBool() else make_input(fdp, grid, 2)
    if isinstance(positions, np.ndarray) and positions.dtype.kind in "iu" and fdp.ConsumeBool():
        # Beyond the rope table, and far beyond (wrapping is NumPy's business, not attn's).
        with np.errstate(all="ignore"):
            positions = positions.astype(np.int64) + pick(fdp, [60, 1 << 40, -(1 << 62)])
    mask, bad_mask = (None, False) if fdp.ConsumeBool() else make_input(fdp, grid, 1)
    saved = snapshot([x, positions, mask])
    bad = bad_x or bad_p or bad_mask
    if decode:
        try:
            cache = layer.new_cache(max(B, 1), pick(fdp, [1, 4, 8]),
                                    pick(fdp, ["f32", "f16", "bf16"]))
        except ALLOWED:
            return
        result = call(layer.decode, bad, x, cache, position_ids=positions, attention_mask=mask)
    else:
        lengths, bad_l = (None, False) if fdp.ConsumeBool() else make_input(fdp, (B,), 2)
        mla = "auto" if fdp.ConsumeIntInRange(0, 3) else pick(fdp, ["naive", "absorbed", "x"])
        result = call(layer.forward, bad or bad_l, x, position_ids=positions,
                      attention_mask=mask, mla=mla, lengths=lengths)
    if result is None:
        return
    check_unchanged(saved)
    xa = plain(x)
    # The output has the dtype of hidden_states (float16, float32 or float64 for NumPy input).
    floats = (np.float16, np.float32, np.float64)
    if not isinstance(result, np.ndarray) or result.dtype not in floats:
        raise Finding(f"layer result is not a float ndarray: {type(result)}")
    if xa is not None and xa.dtype in floats and result.dtype != xa.dtype:
        raise Finding(f"layer result dtype {result.dtype}, hidden_states {xa.dtype}")
    if xa is not None and result.shape != xa.shape:
        raise Finding(f"layer result shape {result.shape}, hidden_states {xa.shape}")
    if not np.all(np.isfinite(result)):
        raise Finding("layer returned a non-finite output")


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 5)
    try:
        if target <= 2:
            fuzz_attention(fdp)
        elif target <= 4:
            fuzz_mla(fdp)
        else:
            fuzz_layer(fdp)
    except Finding:
        if LAST_CALL is not None:
            print(describe(*LAST_CALL), file=sys.stderr)
        raise


def main():
    atheris.instrument_all()  # this file and NumPy's Python code: coverage to guide mutation
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
