# SPDX-License-Identifier: Apache-2.0
"""attn.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention
and a float64 reference (softmax in float64 with the explicit boolean mask), for every mask
pattern attn expresses, and its errors for the ones it does not.

Accuracy rule (FlashAttention's): attn's max error against float64 is at most twice torch's own
SDPA's error in the same precision, plus a small floor.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from .conftest import REPO

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}
NEG_INF = float("-inf")


def reference(q, k, v, allowed, scale=None):
    """float64 softmax(q kᵀ · scale, masked) v on [B, H, S, D]; rows with no key are zero."""
    qd, kd, vd = q.double(), k.double(), v.double()
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if kv_heads != heads:
        kd = kd.repeat_interleave(heads // kv_heads, -3)
        vd = vd.repeat_interleave(heads // kv_heads, -3)
    scores = qd @ kd.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~allowed, NEG_INF)
    return torch.softmax(scores, -1).nan_to_num(0.0) @ vd


def assert_matches(out, q, k, v, allowed, torch_kwargs, scale=None):
    """out (attn) vs float64, within 2x torch's error + floor; and shape/dtype as torch's."""
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale, **torch_kwargs)
    assert out.shape == expected.shape and out.dtype == q.dtype
    # [B, H, Sq, Dv] laid out as [B, Sq, H, Dv] (no transposing copy; see the docstring).
    assert out.transpose(-3, -2).is_contiguous()
    ref = reference(q, k, v, allowed, scale)
    err_attn = (out.double() - ref).abs().max().item()
    err_torch = (expected.double() - ref).abs().max().item()
    assert err_attn <= 2 * err_torch + FLOOR[q.dtype], (err_attn, err_torch)
    return err_attn, err_torch


def qkv(batch, heads, kv_heads, queries, length, dim=64, value_dim=None, dtype=torch.float32):
    value_dim = value_dim or dim
    q = torch.randn(batch, heads, queries, dim).to(dtype)
    k = torch.randn(batch, kv_heads, length, dim).to(dtype)
    v = torch.randn(batch, kv_heads, length, value_dim).to(dtype)
    return q, k, v


def band(queries, length, offset, window=0):
    """[Sq, T]: query s at slot offset + s sees t <= slot (and t > slot - window)."""
    t = torch.arange(length)[None, :]
    p = offset + torch.arange(queries)[:, None]
    visible = t <= p
    if window:
        visible &= t > p - window
    return visible


def padding(batch, length, left=(), right=()):
    """[B, T] keep flags: sequence b loses left[b] keys at the start and right[b] at the end."""
    keep = torch.ones(batch, length, dtype=torch.bool)
    for b, n in enumerate(left):
        keep[b, :n] = False
    for b, n in enumerate(right):
        keep[b, length - n:] = False
    return keep


def as_float(mask, dtype):
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, NEG_INF)


# Each pattern: (Sq, T, builder) with builder(B, H, dtype) -> (torch kwargs, allowed bool
# broadcastable to [B, H, Sq, T]).
PATTERNS = {
    "none": (5, 37, lambda B, H, dt: ({}, torch.ones(5, 37, dtype=torch.bool))),
    "is_causal_square": (16, 16, lambda B, H, dt: ({"is_causal": True}, band(16, 16, 0))),
    "is_causal_top_left": (4, 37, lambda B, H, dt: ({"is_causal": True}, band(4, 37, 0))),
    "is_causal_more_queries_than_keys": (
        9, 6, lambda B, H, dt: ({"is_causal": True}, band(9, 6, 0))),
    "decode_bottom_right": (1, 37, lambda B, H, dt: _mask(band(1, 37, 36))),
    "decode_left_padding": (
        1, 37, lambda B, H, dt: _mask(padding(B, 37, left=(5,))[:, None, None, :])),
    "causal_bottom_right": (4, 37, lambda B, H, dt: _mask(band(4, 37, 33))),
    "causal_bottom_right_float": (
        4, 37, lambda B, H, dt: _mask(band(4, 37, 33)[None, None], float_dtype=dt)),
    "causal_bottom_right_float32_mask": (
        4, 37, lambda B, H, dt: _mask(band(4, 37, 33)[None, None], float_dtype=torch.float32)),
    "left_padding_causal": (
        4, 37, lambda B, H, dt: _mask(padding(B, 37, left=(3,))[:, None, None, :]
                                      & band(4, 37, 33))),
    "right_padding": (5, 37, lambda B, H, dt: _mask(padding(B, 37, right=(4,))[:, None, None])),
    "right_padding_float": (
        5, 37, lambda B, H, dt: _mask(padding(B, 37, right=(0, 9))[:, None, None], float_dtype=dt)),
    "key_padding_shared_1_1_1_T": (
        5, 37, lambda B, H, dt: _mask(padding(1, 37, left=(2,), right=(3,))[:, None, None])),
    "prefill_left_padding_empty_rows": (
        12, 12, lambda B, H, dt: _mask(padding(B, 12, left=(4,))[:, None, None, :]
                                       & band(12, 12, 0))),
    "sliding_window_causal": (8, 37, lambda B, H, dt: _mask(band(8, 37, 29, window=5))),
    "sliding_window_causal_left_padding": (
        16, 16, lambda B, H, dt: _mask(padding(B, 16, left=(0, 6))[:, None, None, :]
                                       & band(16, 16, 0, window=4))),
    "sliding_window_float": (
        8, 20, lambda B, H, dt: _mask(band(8, 20, 12, window=3)[None, None], float_dtype=dt)),
    "static_cache_offset": (3, 37, lambda B, H, dt: _mask(band(3, 37, 20)[None, None])),
    "negative_offset": (6, 6, lambda B, H, dt: _mask(band(6, 6, -2))),
    "every_head_B_H_Sq_T": (
        4, 37, lambda B, H, dt: _mask((padding(B, 37, right=(2,))[:, None, None, :]
                                       & band(4, 37, 33)).expand(B, H, 4, 37).contiguous())),
    "per_head_broadcast_1_H_Sq_T": (
        4, 37, lambda B, H, dt: _mask(band(4, 37, 33).expand(1, H, 4, 37).contiguous())),
    "batch_fully_masked": (
        3, 10, lambda B, H, dt: _mask(padding(B, 10, left=(10,))[:, None, None, :])),
    "all_masked_bool": (3, 10, lambda B, H, dt: _mask(torch.zeros(3, 10, dtype=torch.bool))),
    # Encoder padding: padded queries see nothing (zeros), the others every real key.
    "query_and_key_padding": (
        10, 10, lambda B, H, dt: _mask(padding(B, 10, right=(3,))[:, None, :, None]
                                       & padding(B, 10, right=(3,))[:, None, None, :])),
    "query_and_key_padding_causal": (
        10, 10, lambda B, H, dt: _mask(padding(B, 10, right=(0, 4))[:, None, :, None]
                                       & padding(B, 10, right=(0, 4))[:, None, None, :]
                                       & band(10, 10, 0))),
    "mask_broadcast_over_keys": (
        4, 10, lambda B, H, dt: _mask(torch.tensor([True, False, True, True])[:, None])),
}


def _mask(allowed, float_dtype=None):
    mask = allowed if float_dtype is None else as_float(allowed, float_dtype)
    return {"attn_mask": mask}, allowed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_mask_patterns_match_torch(attn, pattern, dtype):
    queries, length, build = PATTERNS[pattern]
    batch, heads, kv_heads = 2, 8, 2
    q, k, v = qkv(batch, heads, kv_heads, queries, length, dtype=dtype)
    kwargs, allowed = build(batch, heads, dtype)
    kwargs["enable_gqa"] = True
    with torch.no_grad():
        out = attn.scaled_dot_product_attention(q, k, v, **kwargs)
    assert_matches(out, q, k, v, allowed, kwargs)


HEAD_SHAPES = {
    # (H, G, D, Dv, enable_gqa)
    "mha_d64": (4, 4, 64, 64, False),
    "mha_d128": (4, 4, 128, 128, False),
    "gqa_4_to_1": (8, 2, 128, 128, True),
    "mqa_broadcast": (4, 1, 64, 64, False),
    "mqa_enable_gqa": (4, 1, 128, 128, True),
    "deepseek_k192_v128": (4, 4, 192, 128, False),
    "dv_wider": (4, 2, 32, 96, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "padding+causal"])
@pytest.mark.parametrize("shape", list(HEAD_SHAPES))
def test_head_shapes_and_dims(attn, shape, masked, dtype):
    heads, kv_heads, dim, value_dim, gqa = HEAD_SHAPES[shape]
    batch, queries, length = 2, 6, 19
    q, k, v = qkv(batch, heads, kv_heads, queries, length, dim, value_dim, dtype)
    if masked:
        allowed = padding(batch, length, left=(0, 5))[:, None, None, :] & band(queries, length,
                                                                            length - queries)
        kwargs = {"attn_mask": allowed}
    else:
        allowed, kwargs = band(queries, length, 0), {"is_causal": True}
    out = attn.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kwargs)
    assert out.shape == (batch, heads, queries, value_dim)
    assert_matches(out, q, k, v, allowed, dict(kwargs, enable_gqa=gqa))


def test_scale_and_default_scale(attn):
    q, k, v = qkv(1, 2, 2, 3, 9)
    allowed = torch.ones(3, 9, dtype=torch.bool)
    assert_matches(attn.scaled_dot_product_attention(q, k, v, scale=0.3), q, k, v, allowed, {},
                   scale=0.3)
    default = attn.scaled_dot_product_attention(q, k, v)
    explicit = attn.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(64))
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_three_dim_inputs(attn):
    q, k, v = qkv(1, 4, 4, 5, 11)
    out = attn.scaled_dot_product_attention(q[0], k[0], v[0], is_causal=True)
    assert out.shape == (4, 5, 64)
    assert_matches(out, q[0], k[0], v[0], band(5, 11, 0), {"is_causal": True})
    mask = padding(1, 11, left=(3,))
    out = attn.scaled_dot_product_attention(q[0], k[0], v[0], attn_mask=mask)
    assert_matches(out, q[0], k[0], v[0], mask, {"attn_mask": mask})


def test_key_value_batch_broadcast(attn):
    q, k, v = qkv(3, 4, 2, 5, 11)
    k, v = k[:1], v[:1]
    out = attn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.shape == (3, 4, 5, 64)
    assert_matches(out, q, k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1), band(5, 11, 0),
                   {"is_causal": True, "enable_gqa": True})


def test_non_contiguous_inputs(attn):
    """A slice of a larger K/V buffer (a static cache), a transposed query: read as they lie."""
    cache_k = torch.randn(2, 2, 64, 64)
    cache_v = torch.randn(2, 2, 64, 64)
    k, v = cache_k[:, :, :21], cache_v[:, :, :21]
    q = torch.randn(2, 3, 8, 64).transpose(1, 2)  # [B, H, S, D] view of [B, S, H, D]
    mask = band(3, 21, 18)
    out = attn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert_matches(out, q, k, v, mask, {"attn_mask": mask, "enable_gqa": True})


def test_inference_mode_and_no_grad(attn):
    q, k, v = qkv(1, 2, 2, 3, 5)
    with torch.inference_mode():
        a = attn.scaled_dot_product_attention(q, k, v)
    with torch.no_grad():
        b = attn.scaled_dot_product_attention(q.requires_grad_(), k, v)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_shapes(attn):
    q, k, v = qkv(2, 2, 2, 0, 5)
    assert attn.scaled_dot_product_attention(q, k, v).shape == (2, 2, 0, 64)
    q, k, v = qkv(2, 2, 2, 3, 0)
    out = attn.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 2, 3, 64) and not out.any()


def test_import_attn_does_not_import_torch():
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = ("import sys, attn; assert 'torch' not in sys.modules, 'import attn imported torch';"
            "attn.attention; assert 'torch' not in sys.modules;"
            "f = attn.scaled_dot_product_attention; assert 'torch' in sys.modules;"
            "import torch; assert hasattr(torch.ops.attn, 'sdpa'); print(f.__module__)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "attn.ops"


# --- masks attn cannot express ---------------------------------------------------------------

NOT_EXPRESSIBLE = "this attn_mask is not expressible as key padding + causal + sliding window"


def _per_head():
    mask = band(4, 9, 5).expand(1, 2, 4, 9).clone()
    mask[0, 1, 0, 0] = False
    return mask


UNSUPPORTED_MASKS = {
    "differs_between_heads": (_per_head, "differs between heads"),
    "random_pattern": (lambda: torch.rand(4, 9, generator=torch.Generator().manual_seed(1)) > 0.5,
                       "differs at [batch"),
    "hole_in_the_band": (lambda: band(4, 9, 5).index_put_((torch.tensor(2), torch.tensor(1)),
                                                          torch.tensor(False)),
                         "differs at [batch 0, query 2, key 1]"),
    "additive_bias": (lambda: torch.zeros(4, 9).masked_fill(~band(4, 9, 5), NEG_INF)
                      + torch.linspace(-1, 0, 9),
                      "float masks may hold only 0 (attend) and -inf (masked)"),
    "finfo_min_instead_of_inf": (
        lambda: torch.zeros(4, 9).masked_fill(~band(4, 9, 5), torch.finfo(torch.float32).min),
        "large negative number in place of -inf"),
    "nan_in_float_mask": (lambda: torch.zeros(4, 9).index_put_(
        (torch.tensor(1), torch.tensor(3)), torch.tensor(float("nan"))), "found nan"),
    # Rows see keys t >= 6 + s: a window whose query slots lie past the last key.
    "anti_causal": (lambda: ~band(4, 9, 5), "query slots past the last key"),
    "two_disjoint_runs": (lambda: band(4, 9, 5) & ~band(4, 9, 2, window=2), "differs at"),
    "window_past_the_last_key": (lambda: band(6, 4, 0, window=2), "query slots past the last key"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED_MASKS))
def test_unsupported_masks_raise(attn, case):
    build, message = UNSUPPORTED_MASKS[case]
    mask = build()
    queries, length = mask.shape[-2:]
    q, k, v = qkv(1, 2, 2, queries, length)
    with pytest.raises(NotImplementedError) as info:
        attn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert NOT_EXPRESSIBLE in str(info.value)
    assert message in str(info.value)


# --- bad input -------------------------------------------------------------------------------


def _bad(case):
    q, k, v = qkv(2, 4, 2, 3, 7)
    kw = {"enable_gqa": True}
    if case == "dropout":
        return (q, k, v), dict(kw, dropout_p=0.1)
    if case == "dtype_mismatch":
        return (q, k.half(), v.half()), kw
    if case == "float64":
        return (q.double(), k.double(), v.double()), kw
    if case == "head_dim_mismatch":
        return (q, k[..., :32], v), kw
    if case == "heads_not_a_multiple":
        return (q, torch.randn(2, 3, 7, 64), torch.randn(2, 3, 7, 64)), kw
    if case == "gqa_without_enable_gqa":
        return (q, k, v), {}
    if case == "mask_and_is_causal":
        return (q, k, v), dict(kw, attn_mask=band(3, 7, 4), is_causal=True)
    if case == "mask_int_dtype":
        return (q, k, v), dict(kw, attn_mask=band(3, 7, 4).int())
    if case == "mask_half_for_float32":
        return (q, k, v), dict(kw, attn_mask=as_float(band(3, 7, 4), torch.float16))
    if case == "mask_shape":
        return (q, k, v), dict(kw, attn_mask=torch.ones(3, 6, dtype=torch.bool))
    if case == "mask_rank":
        return (q, k, v), dict(kw, attn_mask=torch.ones(7, dtype=torch.bool))
    if case == "negative_scale":
        return (q, k, v), dict(kw, scale=-1.0)
    if case == "rank_5":
        return (q[None], k[None], v[None]), kw
    if case == "value_length":
        return (q, k, v[:, :, :5]), kw
    if case == "batch_mismatch":
        return (q, k[:1].expand(3, -1, -1, -1), v[:1].expand(3, -1, -1, -1)), kw
    if case == "not_a_tensor":
        return (q.numpy(), k, v), kw
    raise AssertionError(case)


BAD_INPUT = {
    "dropout": (NotImplementedError, "dropout is not supported"),
    "dtype_mismatch": (TypeError, "must have the same dtype"),
    "float64": (TypeError, "must be float32, float16 or bfloat16, got torch.float64"),
    "head_dim_mismatch": (ValueError, "head dims differ: 64 and 32"),
    "heads_not_a_multiple": (ValueError, "must divide the number of heads in query"),
    "gqa_without_enable_gqa": (ValueError, "pass enable_gqa=True"),
    "mask_and_is_causal": (ValueError, "should not be set when is_causal=True"),
    "mask_int_dtype": (TypeError, "attn_mask must be bool or float"),
    "mask_half_for_float32": (TypeError, "attn_mask must be bool or float"),
    "mask_shape": (ValueError, "does not broadcast to [B, H, Sq, T] = [2, 4, 3, 7]"),
    "mask_rank": (ValueError, "attn_mask must have 2 to 4 dimensions"),
    "negative_scale": (ValueError, "scale must be a finite positive number"),
    "rank_5": (ValueError, "query must be [B, H, S, D]"),
    "value_length": (ValueError, "must match key"),
    "batch_mismatch": (ValueError, "neither match nor broadcast"),
    "not_a_tensor": (TypeError, "query must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises(attn, case):
    args, kwargs = _bad(case)
    error, message = BAD_INPUT[case]
    with pytest.raises(error) as info:
        attn.scaled_dot_product_attention(*args, **kwargs)
    assert message in str(info.value)
    assert "attn.scaled_dot_product_attention" in str(info.value)


@pytest.mark.parametrize("where", ["query", "key", "value"])
def test_non_finite_inputs_raise(attn, where):
    tensors = dict(zip(("query", "key", "value"), qkv(1, 2, 2, 3, 5)))
    tensors[where][0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value \(nan\)"):
        attn.scaled_dot_product_attention(**tensors)


def test_requires_grad_raises_clearly(attn):
    q, k, v = qkv(1, 2, 2, 3, 5)
    with pytest.raises(RuntimeError, match="attn has no backward"):
        attn.scaled_dot_product_attention(q, k.requires_grad_(), v)


def test_non_cpu_tensor_reaching_the_kernel(attn, ops):
    """Meta tensors go to the fake kernel (shapes only); the real kernel refuses any non-CPU
    device, naming it. (No CUDA here: the CPU kernel is called directly with meta tensors.)"""
    q, k, v = (t.to("meta") for t in qkv(1, 4, 2, 3, 5))
    out = attn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert out.device.type == "meta" and out.shape == (1, 4, 3, 64)
    with pytest.raises(RuntimeError, match="attn runs on the CPU; got a meta tensor for query"):
        ops.sdpa._init_fn(q, k, v, None, False, None, True)
