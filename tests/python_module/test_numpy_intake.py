# SPDX-License-Identifier: Apache-2.0
"""NumPy arrays in and out, with NumPy alone (no torch), under NumPy 1.x and 2.x alike.

NumPy 2 changed the C layout of dtype objects; the module reads arrays through NumPy's
Python-level interface, so every dtype, layout and error below must behave the same under both
majors (the system Python has NumPy 1.x; scripts/pip-install-check.sh runs this file in a venv
with NumPy 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import LLAMA, assert_unchanged, snapshot

RNG = np.random.default_rng(7)


def reference_attention(q, k, v, causal=True, mask=None):
    """softmax(q kᵀ / sqrt(D) + mask) v in float64, [B, Sq, H, D] x [B, T, G, D] (GQA)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, Sq, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    k = np.repeat(k, H // G, axis=2)
    v = np.repeat(v, H // G, axis=2)
    scores = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(D)
    if causal:
        slots = np.arange(Sq)[:, None] + (T - Sq)
        scores = np.where(np.arange(T)[None, :] <= slots, scores, -np.inf)
    if mask is not None:
        scores = np.where(np.asarray(mask, bool)[:, None, None, :], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bhst,bthd->bshd", weights, v)


def qkv(dtype=np.float32, B=2, Sq=3, T=5, H=4, G=2, D=8):
    q = RNG.standard_normal((B, Sq, H, D)).astype(dtype)
    k = RNG.standard_normal((B, T, G, D)).astype(dtype)
    v = RNG.standard_normal((B, T, G, D)).astype(dtype)
    return q, k, v


def test_numpy_version_reported(attn):
    """The header of a run says which NumPy it covered; both majors are supported."""
    assert np.__version__.split(".")[0] in ("1", "2")


# ---- every supported dtype ------------------------------------------------------------------

@pytest.mark.parametrize("dtype,in_place", [
    (np.float32, True), (np.float16, True), (np.float64, False)])
def test_float_dtypes_kernel(attn, copies, dtype, in_place):
    q, k, v = qkv(np.float32)
    k, v = k.astype(dtype), v.astype(dtype)
    before = snapshot(q, k, v)
    out = attn.attention(q, k, v)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 8)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    # float32 q is read in place; float32/float16 k and v too, float64 ones are copied.
    assert copies() == (0 if in_place else 2)
    assert_unchanged(before, q, k, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_dtypes_query(attn, copies, dtype):
    q, k, v = qkv(np.float32)
    q = q.astype(dtype)
    out = attn.attention(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert copies() == (0 if dtype == np.float32 else 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_float_dtypes_hidden_states(attn, dtype):
    layer = attn.Attention.random(LLAMA, seed=3)
    x = RNG.standard_normal((2, 4, LLAMA["hidden_size"])).astype(dtype)
    y = layer.forward(x)
    expected = layer.forward(x.astype(np.float32))
    # The output has the input's dtype: the float32 result rounded once (issue 10).
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, expected.astype(dtype))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8])
def test_integer_dtypes_position_ids(attn, copies, dtype):
    layer = attn.Attention.random(LLAMA, seed=3)
    x = RNG.standard_normal((2, 4, LLAMA["hidden_size"])).astype(np.float32)
    positions = np.array([[0, 1, 2, 3], [5, 6, 7, 9]])
    expected = layer.forward(x, position_ids=positions.astype(np.int64))
    start = copies()
    y = layer.forward(x, position_ids=positions.astype(dtype))
    np.testing.assert_array_equal(y, expected)
    # hidden_states are always copied once; int64 positions are read in place.
    assert copies() - start == (1 if dtype == np.int64 else 2)


@pytest.mark.parametrize("dtype", [
    np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
    np.float64])
def test_mask_dtypes(attn, copies, dtype):
    q, k, v = qkv()
    mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]])
    expected = reference_attention(q, k, v, mask=mask)
    start = copies()
    out = attn.attention(q, k, v, attention_mask=mask.astype(dtype))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert copies() - start == (0 if dtype in (np.bool_, np.uint8) else 1)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_dtypes_lengths(attn, dtype):
    layer = attn.Attention.random(LLAMA, seed=3)
    x = RNG.standard_normal((2, 4, LLAMA["hidden_size"])).astype(np.float32)
    cache = layer.new_cache(batch=2, capacity=8, dtype="f32")
    y = layer.prefill(x, cache, lengths=np.array([4, 2], dtype))
    assert np.all(y[1, 2:] == 0)
    np.testing.assert_array_equal(cache.lengths, [4, 2])


def test_read_only_inputs(attn, copies):
    q, k, v = qkv()
    for a in (q, k, v):
        a.flags.writeable = False
    out = attn.attention(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert copies() == 0


def test_lists_and_scalars_go_through_asarray(attn):
    q, k, v = qkv()
    out = attn.attention(q.tolist(), k.tolist(), v.tolist())
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)


# ---- outputs ---------------------------------------------------------------------------------

def test_outputs_are_well_formed_arrays(attn):
    """Shapes and strides of returned arrays (built by the module) are right under both NumPy
    majors: the library's buffers are row-major float32 / int64."""
    q, k, v = qkv()
    out = attn.attention(q, k, v)
    assert out.flags.c_contiguous and out.strides == (3 * 4 * 8 * 4, 4 * 8 * 4, 8 * 4, 4)
    layer = attn.Attention.random(LLAMA, seed=3)
    cache = layer.new_cache(batch=3, capacity=8, dtype="f32")
    layer.prefill(RNG.standard_normal((3, 2, LLAMA["hidden_size"])).astype(np.float32), cache)
    lengths = cache.lengths
    assert lengths.dtype == np.int64 and lengths.shape == (3,) and lengths.strides == (8,)
    np.testing.assert_array_equal(lengths, [2, 2, 2])
    weights = attn.random_weights(LLAMA, seed=1)
    w = weights["model.layers.0.self_attn.q_proj.weight"]
    assert w.dtype == np.float32 and w.flags.c_contiguous
    assert w.shape == (LLAMA["num_attention_heads"] * LLAMA["head_dim"], LLAMA["hidden_size"])
    # The arrays round-trip: a layer built from them equals the one built from the seed.
    x = RNG.standard_normal((1, 3, LLAMA["hidden_size"])).astype(np.float32)
    np.testing.assert_array_equal(attn.Attention.from_config(LLAMA, weights).forward(x),
                                  attn.Attention.random(LLAMA, seed=1).forward(x))


def test_out_argument(attn):
    q, k, v = qkv()
    out = np.empty((2, 3, 4, 8), np.float32)
    result = attn.attention(q, k, v, out=out)
    assert np.shares_memory(result, out)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    read_only = np.empty_like(out)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        attn.attention(q, k, v, out=read_only)
    with pytest.raises(ValueError, match="out"):
        attn.attention(q, k, v, out=np.empty((2, 3, 4, 8), np.float64))
    with pytest.raises(ValueError, match="out"):
        attn.attention(q, k, v, out=np.empty((2, 3, 4, 16), np.float32)[..., ::2])


# ---- non-contiguous arrays -------------------------------------------------------------------

def test_hf_cache_layout_in_place(attn, copies):
    """A [B, G, T, D] cache passed as .transpose(0, 2, 1, 3), and the first T slots of a larger
    buffer, are read where they are."""
    q, _, _ = qkv()
    k_cache = RNG.standard_normal((2, 2, 9, 8)).astype(np.float32)   # [B, G, capacity, D]
    v_cache = RNG.standard_normal((2, 2, 9, 8)).astype(np.float32)
    k = k_cache[:, :, :5].transpose(0, 2, 1, 3)
    v = v_cache[:, :, :5].transpose(0, 2, 1, 3)
    assert not k.flags.c_contiguous
    out = attn.attention(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert copies() == 0


@pytest.mark.parametrize("layout", ["strided-last-axis", "reversed", "fortran", "batch-gap"])
def test_non_contiguous_inputs(attn, copies, layout):
    q, k, v = qkv()

    def relayout(a):
        if layout == "strided-last-axis":
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
            wide[..., ::2] = a
            return wide[..., ::2]
        if layout == "reversed":
            return np.ascontiguousarray(a[:, ::-1])[:, ::-1]
        if layout == "fortran":
            return np.asfortranarray(a)
        big = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
        big[::2] = a
        return big[::2]

    views = [relayout(a) for a in (q, k, v)]
    for view, original in zip(views, (q, k, v)):
        np.testing.assert_array_equal(view, original)
    before = snapshot(*views)
    out = attn.attention(*views)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert_unchanged(before, *views)
    if layout == "batch-gap":
        assert copies() == 0   # the batch stride is free for q, k and v


def test_non_contiguous_hidden_states_and_positions(attn):
    layer = attn.Attention.random(LLAMA, seed=3)
    x = RNG.standard_normal((2, 4, LLAMA["hidden_size"])).astype(np.float32)
    positions = np.array([[0, 1, 2, 3], [5, 6, 7, 9]], np.int64)
    expected = layer.forward(x, position_ids=positions)
    x_view = np.asfortranarray(x)
    positions_view = np.zeros((2, 8), np.int64)
    positions_view[:, ::2] = positions
    y = layer.forward(x_view, position_ids=positions_view[:, ::2])
    np.testing.assert_array_equal(y, expected)


def test_record_field_views(attn, copies):
    """A field of a structured array has byte strides that are not whole elements: copied once
    and read correctly."""
    q, k, v = qkv()
    record = np.zeros(q.shape, dtype=[("pad", np.int8), ("x", np.float32)])
    record["x"] = q
    field = record["x"]
    assert field.strides[-1] % 4 != 0
    out = attn.attention(field, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert copies() >= 1


# ---- wrong dtypes ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,message", [
    (np.complex64, r"q: unsupported dtype complex64 \('<c8'"),
    (">f4", r"q: unsupported dtype float32 \('>f4'.*native byte order"),
    (np.uint16, r"q: unsupported dtype uint16"),
    (np.uint64, r"q: unsupported dtype uint64"),
    ("datetime64[s]", r"q: unsupported dtype datetime64"),
    ("V8", r"q: unsupported dtype void64"),
])
def test_unsupported_dtypes(attn, dtype, message):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=message) as raised:
        attn.attention(np.zeros(q.shape, dtype), k, v)
    assert "supported: float32, float16" in str(raised.value)


def test_object_arrays_rejected(attn):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q: unsupported dtype object"):
        attn.attention(q.astype(object), k, v)


def test_integer_where_float_expected(attn):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q: expected a floating-point dtype.*got int32"):
        attn.attention(q.astype(np.int32), k, v)
    layer = attn.Attention.random(LLAMA)
    with pytest.raises(ValueError, match="hidden_states: expected a floating-point dtype"):
        layer.forward(np.zeros((1, 2, LLAMA["hidden_size"]), np.int64))


def test_float_where_integer_expected(attn):
    layer = attn.Attention.random(LLAMA)
    x = np.zeros((1, 2, LLAMA["hidden_size"]), np.float32)
    with pytest.raises(ValueError, match="position_ids: expected an integer dtype, got float32"):
        layer.forward(x, position_ids=np.zeros((1, 2), np.float32))


def test_mask_values_checked(attn):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"attention_mask: values must be 0 \(pad\) or 1"):
        attn.attention(q, k, v, attention_mask=np.full((2, 5), 2, np.int32))
