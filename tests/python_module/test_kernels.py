# SPDX-License-Identifier: Apache-2.0
"""attn.attention and attn.mla_attention against softmax(q kᵀ · scale + mask) v computed by torch
in float64 (no autograd), plus their zero-copy paths and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import LLAMA, assert_unchanged, require_torch, snapshot

torch = require_torch()

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def reference(q, k, v, causal=True, scale=None, mask=None, window=0):
    """float64 softmax(q kᵀ·scale + additive mask) v with GQA head sharing; [B, Sq, H, Dv]."""
    q, k, v = (torch.as_tensor(a).double() for a in (q, k, v))
    B, Sq, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    k = k.repeat_interleave(H // G, dim=2)
    v = v.repeat_interleave(H // G, dim=2)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    slot = torch.arange(Sq)[:, None] + (T - Sq)
    t = torch.arange(T)[None, :]
    visible = torch.ones(Sq, T, dtype=torch.bool)
    if causal:
        visible &= t <= slot
    if window:
        visible &= t > slot - window
    visible = visible[None, None].expand(B, H, Sq, T)
    if mask is not None:
        visible = visible & (torch.as_tensor(mask) != 0)[:, None, None, :]
    additive = torch.zeros(visible.shape, dtype=torch.float64).masked_fill(~visible, -math.inf)
    p = torch.softmax(scores + additive, dim=-1).nan_to_num(0.0)  # no visible key -> zero row
    return torch.einsum("bhst,bthd->bshd", p, v)


# With bf16 K/V on a CPU with avx512_bf16 the kernel forms Q·Kᵀ as bf16 dot products and rounds
# an fp32 Q to bf16 first (relative 2^-9 per element); outputs then agree to ~1e-3, not 1e-5.
BF16_PRODUCT_TOL = 1e-2


def assert_close(got, want, rel=1e-5):
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == tuple(want.shape)
    err = (got.double() - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"max error {err:.3e}"


def same_precision(q, k, v, causal=True, scale=None):
    """What a same-precision PyTorch run computes (transformers' eager attention): scores from
    q kᵀ in the inputs' dtype, softmax in float32, probabilities rounded back to that dtype, then
    p v in that dtype. [B, Sq, H, Dv] in the inputs' dtype."""
    B, Sq, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    k = k.repeat_interleave(H // G, dim=2)
    v = v.repeat_interleave(H // G, dim=2)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)).float() * scale
    if causal:
        hidden = torch.arange(T)[None, :] > torch.arange(Sq)[:, None] + (T - Sq)
        scores = scores.masked_fill(hidden, -math.inf)
    p = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(p, v.transpose(1, 2)).transpose(1, 2)


def assert_flash_rule(got, want, baseline):
    """FlashAttention's rule for reduced-precision inputs: error against float64 at most twice
    the error of the same-precision PyTorch run `baseline`, plus a floor of 1e-5 relative. (attn
    rounds the probabilities to bf16 before p·v where it uses AMX tiles, as eager does.)"""
    got = torch.as_tensor(got)
    assert got.dtype == torch.float32 and tuple(got.shape) == tuple(want.shape)
    err = (got.double() - want).abs().max().item()
    base = (baseline.double() - want).abs().max().item()
    assert err <= 2 * base + 1e-5 * want.abs().max().item(), f"max error {err:.3e}, torch {base:.3e}"


def rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


# NumPy has no bfloat16: bf16 goes through torch only.
@pytest.mark.parametrize("dtype,frontend", [("f32", "numpy"), ("f16", "numpy"), ("f32", "torch"),
                                            ("f16", "torch"), ("bf16", "torch")])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("sq,t", [(7, 7), (3, 10), (1, 9)], ids=["prefill", "chunk", "decode"])
def test_attention_matches_torch(attn, dtype, frontend, heads, kv_heads, causal, sq, t):
    B, D, Dv = 2, 32, 24
    tdt = TORCH_DTYPES[dtype]
    q = rand((B, sq, heads, D), tdt, 1)
    k = rand((B, t, kv_heads, D), tdt, 2)
    v = rand((B, t, kv_heads, Dv), tdt, 3)
    want = reference(q, k, v, causal=causal)
    if frontend == "numpy":
        q, k, v = (a.numpy() for a in (q, k, v))
    got = attn.attention(q, k, v, causal=causal)
    assert isinstance(got, torch.Tensor if frontend == "torch" else np.ndarray)
    if dtype == "bf16":
        assert_flash_rule(got, want, same_precision(q, k, v, causal=causal))
    else:
        assert_close(got, want)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_attention_mask_window_scale(attn, dtype):
    B, Sq, T, H, G, D = 3, 6, 11, 4, 2, 16
    tdt = TORCH_DTYPES[dtype]
    q, k, v = rand((B, Sq, H, D), tdt, 4), rand((B, T, G, D), tdt, 5), rand((B, T, G, D), tdt, 6)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[0, :4] = 0
    mask[1, 5:9] = 0  # with window 3, the query at slot 7 sees only padding -> zero row
    mask[2, :] = 0
    got = attn.attention(q, k, v, attention_mask=mask, window=3, scale=0.3)
    want = reference(q, k, v, mask=mask, window=3, scale=0.3)
    assert_close(got, want)
    assert torch.equal(got[2], torch.zeros_like(got[2]))
    assert torch.equal(got[1, 2], torch.zeros_like(got[1, 2]))
    for m in (mask.bool(), mask.to(torch.uint8), mask.float(), mask.numpy().astype(np.int32)):
        assert torch.equal(attn.attention(q, k, v, attention_mask=m, window=3, scale=0.3), got)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("causal", [True, False])
def test_mla_attention_matches_torch(attn, dtype, causal):
    B, Sq, T, H, rk, dr = 2, 4, 9, 8, 32, 8
    tdt = TORCH_DTYPES[dtype]
    q = rand((B, Sq, H, rk + dr), tdt, 7)
    kv = rand((B, T, rk + dr), tdt, 8)
    got = attn.mla_attention(q, kv, value_dim=rk, causal=causal, scale=0.125)
    want = reference(q, kv[:, :, None, :], kv[:, :, None, :rk], causal=causal, scale=0.125)
    if dtype == "bf16":
        baseline = same_precision(q, kv[:, :, None, :], kv[:, :, None, :rk], causal, scale=0.125)
        assert_flash_rule(got, want, baseline)
    else:
        assert_close(got, want)


# Decode-sized calls at lengths that split the keys across tasks, in the layouts users hold:
# torch's token-major [B, T, G, D] and a head-major cache seen through a transposed view.
# A ragged batch (padding on the left, as HF pads) is one kernel call.
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("layout", ["token-major", "head-major"])
@pytest.mark.parametrize("heads,kv_heads,sq", [(8, 8, 1), (8, 2, 1), (8, 2, 4), (16, 1, 1)])
def test_long_ragged_decode_matches_float64(attn, dtype, layout, heads, kv_heads, sq):
    B, T, D = 3, 3000, 64
    tdt = TORCH_DTYPES[dtype]
    q = rand((B, sq, heads, D), tdt, 21)
    if layout == "token-major":
        k, v = rand((B, T, kv_heads, D), tdt, 22), rand((B, T, kv_heads, D), tdt, 23)
    else:
        k = rand((B, kv_heads, T, D), tdt, 22).transpose(1, 2)
        v = rand((B, kv_heads, T, D), tdt, 23).transpose(1, 2)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, :1000] = 0
    mask[2, :2999 - sq] = 0  # only the last few keys
    got = attn.attention(q, k, v, attention_mask=mask)
    want = reference(q, k, v, mask=mask)
    # <= 8 query rows per kv head compute in fp32 whatever the storage dtype; MQA's 16 rows
    # with bf16 keys take bf16 products.
    rows = sq * heads // kv_heads
    assert_close(got, want, rel=BF16_PRODUCT_TOL if dtype == "bf16" and rows > 8 else 1e-5)


def test_not_causal_with_more_queries_than_keys(attn):
    q = rand((2, 40, 4, 32), torch.float32, 24)
    k, v = rand((2, 20, 2, 32), torch.float32, 25), rand((2, 20, 2, 16), torch.float32, 26)
    assert_close(attn.attention(q, k, v, causal=False), reference(q, k, v, causal=False))
    with pytest.raises(ValueError, match="Sq <= T"):
        attn.attention(q, k, v, causal=True)


def test_nan_in_a_key_no_query_reaches_is_not_examined(attn):
    """Documented: keys and values are checked as the kernel reads them; with a window of 4, a
    decode query never reads key 0, so a NaN there is not an error and changes nothing."""
    q = rand((1, 1, 4, 32), torch.float32, 27)
    k, v = rand((1, 100, 4, 32), torch.float32, 28), rand((1, 100, 4, 32), torch.float32, 29)
    want = attn.attention(q, k, v, window=4)
    k[0, 0, 2, 7] = float("nan")
    v[0, 0, 1, 3] = float("inf")
    assert torch.equal(attn.attention(q, k, v, window=4), want)
    with pytest.raises(ValueError, match=r"k: non-finite value .* at index \[0, 0, 2, 7\]"):
        attn.attention(q, k, v)  # no window: key 0 is read


# ============================================================================ zero copy


def test_zero_copy_numpy_inputs_and_out(attn, copies):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 8, 16), dtype=np.float32)
    k = rng.standard_normal((2, 9, 2, 16), dtype=np.float32)
    v = rng.standard_normal((2, 9, 2, 16)).astype(np.float16)
    v32 = v.astype(np.float32)
    keep = np.ones((2, 9), dtype=np.uint8)
    before = snapshot(q, k, v, keep)
    out = np.full((2, 5, 8, 16), np.nan, dtype=np.float32)
    start = copies()
    got = attn.attention(q, k, v32, attention_mask=keep, out=out)
    got16 = attn.attention(q, k.astype(np.float16), v)
    assert copies() - start == 0
    assert got is out and np.shares_memory(got, out)
    assert_close(out, reference(q, k, v32))
    assert_close(got16, reference(q, k.astype(np.float16), v))
    assert_unchanged(before, q, k, v, keep)


def test_zero_copy_torch_bf16_and_strided_kv(attn, copies):
    """HF caches are [B, G, T, D]: the transposed view reaches the kernel as strides."""
    B, G, T, H, D = 2, 2, 12, 4, 16
    q = rand((B, 3, H, D), torch.float32, 9)
    k_cache = rand((B, G, 20, D), torch.bfloat16, 10)  # capacity 20, 12 filled
    v_cache = rand((B, G, 20, D), torch.bfloat16, 11)
    k = k_cache[:, :, :T].transpose(1, 2)  # [B, T, G, D], not contiguous
    v = v_cache[:, :, :T].transpose(1, 2)
    assert not k.is_contiguous()
    before = snapshot(q, k_cache, v_cache)
    out = torch.empty(B, 3, H, D)
    start = copies()
    got = attn.attention(q, k, v, out=out)
    assert copies() - start == 0
    assert got is out
    assert_close(got, reference(q, k, v), rel=BF16_PRODUCT_TOL)  # fp32 q, bf16 k/v
    assert_unchanged(before, q, k_cache, v_cache)


def test_zero_copy_mla_latent_cache_slice(attn, copies):
    B, T, H, rk, dr = 2, 7, 4, 32, 8
    cache = rand((B, 16, rk + dr), torch.bfloat16, 12)  # capacity 16
    q = rand((B, 1, H, rk + dr), torch.float32, 13)
    start = copies()
    got = attn.mla_attention(q, cache[:, :T], value_dim=rk)
    assert copies() - start == 0
    assert isinstance(got, torch.Tensor) and got.shape == (B, 1, H, rk)
    kv = cache[:, :T]
    assert_close(got, reference(q, kv[:, :, None], kv[:, :, None, :rk]), rel=BF16_PRODUCT_TOL)


def test_copies_only_when_layout_demands(attn, copies):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 8, 4, 16), dtype=np.float32)
    k = rng.standard_normal((2, 8, 4, 16), dtype=np.float32)
    v = rng.standard_normal((2, 8, 4, 16), dtype=np.float32)
    want = reference(q, k, v)
    cases = [
        (dict(q=np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)), 1),
        (dict(q=q.astype(np.float64)), 1),                                    # q float64
        (dict(k=np.asfortranarray(k)), 1),                                    # k last axis strided
        (dict(k=np.ascontiguousarray(k[..., ::-1])[..., ::-1]), 1),            # negative stride
        (dict(v=v.astype(np.float64)), 1),                                    # v to f32
        (dict(q=q[:, ::-1][:, ::-1]), 0),                                     # same memory, no copy
    ]
    for change, expected_copies in cases:
        args = dict(q=q, k=k, v=v)
        args.update(change)
        start = copies()
        got = attn.attention(args["q"], args["k"], args["v"])
        assert copies() - start == expected_copies, list(change)
        assert_close(got, want)


def test_requires_grad_tensor_is_read_without_autograd(attn, copies):
    q = rand((1, 4, 2, 8), torch.float32, 14).requires_grad_()
    k = rand((1, 4, 2, 8), torch.float32, 15)
    start = copies()
    got = attn.attention(q, k, k)
    assert copies() - start == 0
    assert not got.requires_grad
    assert_close(got, reference(q.detach(), k, k))


# ============================================================================ bad inputs


def _qkv(B=1, Sq=4, T=4, H=4, G=2, D=8):
    return (np.zeros((B, Sq, H, D), np.float32), np.zeros((B, T, G, D), np.float32),
            np.zeros((B, T, G, D), np.float32))


@pytest.mark.parametrize("change,needle", [
    (dict(q=np.zeros((4, 4, 8), np.float32)), "q: expected 4 dimensions"),
    (dict(k=np.zeros((1, 4, 2, 8, 1), np.float32)), "k: expected 4 dimensions"),
    (dict(v=np.zeros((1, 5, 2, 8), np.float32)), "v: expected shape"),
    (dict(k=np.zeros((1, 4, 2, 9), np.float32)), "k: head dim 9 differs"),
    (dict(k=np.zeros((1, 4, 3, 8), np.float32), v=np.zeros((1, 4, 3, 8), np.float32)),
     "multiple of kv heads"),
    (dict(k=np.zeros((2, 4, 2, 8), np.float32)), "batch size"),
    (dict(q=np.zeros((1, 4, 4, 8), np.int32)), "q: expected a floating-point dtype"),
    (dict(v=np.zeros((1, 4, 2, 8), np.bool_)), "v: expected a floating-point dtype"),
    (dict(q=np.zeros((1, 4, 4, 8), np.complex64)), "q: unsupported dtype complex64"),
    (dict(q=np.zeros((1, 4, 4, 8), ">f4")), "q: unsupported dtype"),
    (dict(k=np.zeros((1, 3, 2, 8), np.float32), v=np.zeros((1, 3, 2, 8), np.float32)),
     "Sq <= T"),
], ids=["q-rank3", "k-rank5", "v-length", "k-dim", "heads", "batch", "q-int", "v-bool",
        "q-complex", "q-big-endian", "causal-more-queries-than-keys"])
def test_attention_bad_inputs(attn, change, needle):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v)
    args.update(change)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        attn.attention(args["q"], args["k"], args["v"])


def test_negative_bit_tensors_rejected(attn):
    """z.conj().imag is a view whose memory holds +imag with torch's negative bit set; DLPack
    cannot carry the bit, so reading it would flip every sign. The intake refuses it."""
    q, k, v = (torch.from_numpy(a) for a in _qkv())
    z = torch.complex(torch.randn(k.shape), torch.randn(k.shape))
    negated = z.conj().imag
    assert negated.is_neg()
    with pytest.raises(ValueError, match=r"k: tensor has the negative bit set.*resolve_neg"):
        attn.attention(q, negated, v)
    layer = attn.Attention.random(LLAMA)
    x = torch.complex(torch.randn(1, 2, LLAMA["hidden_size"]),
                      torch.randn(1, 2, LLAMA["hidden_size"]))
    with pytest.raises(ValueError, match="hidden_states: tensor has the negative bit set"):
        layer.forward(x.conj().imag)
    # Resolved, the same values are accepted and read with the right sign.
    out = attn.attention(q, k, negated.resolve_neg())
    assert torch.equal(out, attn.attention(q, k, -z.imag)) and out.abs().sum() > 0


def test_conjugate_bit_tensors_rejected(attn):
    q, k, v = _qkv()
    z = torch.complex(torch.randn(q.shape), torch.randn(q.shape)).conj()
    assert z.is_conj()
    with pytest.raises(ValueError, match="q: tensor has the conjugate bit set"):
        attn.attention(z, k, v)


def test_attention_bad_options(attn):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention_mask: expected shape"):
        attn.attention(q, k, v, attention_mask=np.ones((1, 5)))
    with pytest.raises(ValueError, match="values must be 0"):
        attn.attention(q, k, v, attention_mask=np.full((1, 4), 2))
    with pytest.raises(ValueError, match="window requires causal"):
        attn.attention(q, k, v, causal=False, window=2)
    with pytest.raises(ValueError, match="window must be >= 0"):
        attn.attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="value_dim must lie"):
        attn.mla_attention(q, k[:, :, 0], value_dim=9)
    with pytest.raises(ValueError, match="kv: expected 3 dimensions"):
        attn.mla_attention(q, k, value_dim=4)


def test_out_must_be_contiguous_float32_and_writable(attn):
    """out= is the one argument never copied: a wrong one is an error, not a silent copy."""
    q, k, v = _qkv()
    good = np.zeros((1, 4, 4, 8), np.float32)
    for bad, needle in [(np.zeros((1, 4, 4, 8), np.float64), "float64"),
                        (np.zeros((1, 4, 8, 4), np.float32).transpose(0, 1, 3, 2),
                         "not contiguous"),
                        (np.zeros((1, 4, 4, 7), np.float32), r"\[1, 4, 4, 7\]")]:
        with pytest.raises(ValueError, match=needle):
            attn.attention(q, k, v, out=bad)
    good.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        attn.attention(q, k, v, out=good)


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_inputs_raise(attn, which, bad):
    """Documented: NaN/Inf in q, k or v is a ValueError naming the argument and the index;
    check_finite=False skips the scan (outputs then unspecified) and must not raise."""
    rng = np.random.default_rng(2)
    args = dict(q=rng.standard_normal((1, 4, 4, 8), dtype=np.float32),
                k=rng.standard_normal((1, 4, 2, 8), dtype=np.float32),
                v=rng.standard_normal((1, 4, 2, 8), dtype=np.float32))
    args[which][0, 1, 1, 3] = bad
    before = snapshot(*args.values())
    with pytest.raises(ValueError, match=rf"{which}: non-finite value .* at index \[0, 1, 1, 3\]"):
        attn.attention(**args)
    out = attn.attention(**args, check_finite=False)
    assert out.shape == (1, 4, 4, 8)
    assert_unchanged(before, *args.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_half_query_is_named(attn, dtype, bad):
    """16-bit queries are checked by their exponent bits first, then walked to name the index."""
    q = torch.randn(2, 3, 4, 16).to(dtype)
    k, v = torch.randn(2, 5, 2, 16).to(dtype), torch.randn(2, 5, 2, 16).to(dtype)
    attn.attention(q, k, v)  # finite: accepted
    q[1, 2, 3, 15] = bad
    with pytest.raises(ValueError, match=r"q: non-finite value .* at index \[1, 2, 3, 15\]"):
        attn.attention(q, k, v)


def test_non_finite_bf16_kv_raises(attn):
    kv = torch.zeros(1, 4, 16, dtype=torch.bfloat16)
    kv[0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"kv: non-finite value .* at index \[0, 2, 5\]"):
        attn.mla_attention(torch.zeros(1, 1, 2, 16), kv, value_dim=8)


# ============================================================================ ALiBi and chunks


def numpy_reference(q, k, v, causal=True, scale=None, mask=None, window=0, chunk=0, slopes=None,
                    cumulative_positions=False):
    """float64 NumPy, written from the formula: score = scale·q·k + m_h·(pos_t − pos_query) over
    visible keys (causal, window, t // chunk == slot // chunk, mask), softmax, weighted sum of
    values; a row with no visible key is zeros. Positions are slots, or with
    cumulative_positions BLOOM's cumulative sum of the mask minus one."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, Sq, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    keep = np.ones((B, T), bool) if mask is None else np.asarray(mask) != 0
    out = np.zeros((B, Sq, H, v.shape[3]))
    for b in range(B):
        position = np.cumsum(keep[b]) - 1 if cumulative_positions else np.arange(T)
        for s in range(Sq):
            slot = T - Sq + s if causal else s
            t = np.arange(T)
            visible = keep[b].copy()
            if causal:
                visible &= t <= slot
                if window:
                    visible &= t > slot - window
                if chunk:
                    visible &= t // chunk == slot // chunk
            if not visible.any():
                continue
            for h in range(H):
                g = h // (H // G)
                scores = scale * (k[b, :, g] @ q[b, s, h])
                if slopes is not None:
                    query_position = position[min(slot, T - 1)]
                    scores = scores + slopes[h] * (position - query_position)
                scores = np.where(visible, scores, -np.inf)
                w = np.exp(scores - scores.max())
                out[b, s, h] = (w / w.sum()) @ v[b, :, g]
    return out


def alibi_slopes(heads):
    """BLOOM's slopes for a power-of-two head count: 2^(−8(h+1)/H)."""
    return np.array([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], np.float32)


def assert_close_np(got, want, rel=1e-5):
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= rel * np.abs(want).max(), f"max error {err:.3e}"


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (8, 1)], ids=["gqa", "mqa"])
@pytest.mark.parametrize("sq,t", [(7, 7), (3, 10), (1, 9), (13, 30)],
                         ids=["prefill", "chunk", "decode", "long-prefill"])
@pytest.mark.parametrize("chunk,alibi", [(3, False), (5, True), (8, False), (0, True), (4, True)])
def test_alibi_and_chunk_match_numpy(attn, dtype, heads, kv_heads, sq, t, chunk, alibi):
    rng = np.random.default_rng(31)
    np_dtype = np.float32 if dtype == "f32" else np.float16
    q = rng.standard_normal((2, sq, heads, 32)).astype(np.float32)
    k = rng.standard_normal((2, t, kv_heads, 32)).astype(np_dtype)
    v = rng.standard_normal((2, t, kv_heads, 24)).astype(np_dtype)
    mask = np.ones((2, t), np.int64)
    mask[1, ::4] = 0
    slopes = alibi_slopes(heads) if alibi else None
    got = attn.attention(q, k, v, attention_mask=mask, alibi_slopes=slopes, chunk=chunk)
    want = numpy_reference(q, k, v, mask=mask, chunk=chunk, slopes=slopes)
    assert_close_np(got, want)
    # The rule changes the answer (not vacuously equal to plain attention).
    plain = numpy_reference(q, k, v, mask=mask)
    if alibi or chunk < t:
        assert np.abs(want - plain).max() > 1e-3


def test_alibi_not_causal_and_window(attn):
    rng = np.random.default_rng(32)
    q = rng.standard_normal((1, 6, 4, 16)).astype(np.float32)
    k = rng.standard_normal((1, 20, 2, 16)).astype(np.float32)
    v = rng.standard_normal((1, 20, 2, 16)).astype(np.float32)
    slopes = alibi_slopes(4)
    assert_close_np(attn.attention(q, k, v, causal=False, alibi_slopes=slopes),
                    numpy_reference(q, k, v, causal=False, slopes=slopes))
    assert_close_np(attn.attention(q, k, v, window=5, chunk=8, alibi_slopes=slopes),
                    numpy_reference(q, k, v, window=5, chunk=8, slopes=slopes))


def test_alibi_with_left_padding_equals_bloom_positions(attn):
    """Documented: slots instead of BLOOM's cumulative-mask positions give the same output when
    padding is only at the ends of each sequence (here: left padding, as HF pads)."""
    rng = np.random.default_rng(33)
    q = rng.standard_normal((3, 5, 8, 16)).astype(np.float32)
    k = rng.standard_normal((3, 12, 8, 16)).astype(np.float32)
    v = rng.standard_normal((3, 12, 8, 16)).astype(np.float32)
    mask = np.ones((3, 12), np.int64)
    mask[0, :4] = 0
    mask[2, :1] = 0
    slopes = alibi_slopes(8)
    got = attn.attention(q, k, v, attention_mask=mask, alibi_slopes=slopes)
    assert_close_np(got, numpy_reference(q, k, v, mask=mask, slopes=slopes,
                                         cumulative_positions=True))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("layout", ["token-major", "head-major"])
def test_chunked_long_decode_matches_numpy(attn, dtype, layout):
    """Split-key decode: T = 3000 with chunks of 1024 (the query sees keys 2048 … 2999), ALiBi,
    a ragged batch; the keys outside the chunk are never read (NaN there changes nothing)."""
    B, T, H, G, D = 2, 3000, 8, 2, 64
    tdt = TORCH_DTYPES[dtype]
    q = rand((B, 1, H, D), torch.float32, 34)
    if layout == "token-major":
        k, v = rand((B, T, G, D), tdt, 35), rand((B, T, G, D), tdt, 36)
    else:
        k = rand((B, G, T, D), tdt, 35).transpose(1, 2)
        v = rand((B, G, T, D), tdt, 36).transpose(1, 2)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, :2500] = 0
    slopes = torch.tensor(alibi_slopes(H))
    got = attn.attention(q, k, v, attention_mask=mask, alibi_slopes=slopes, chunk=1024)
    want = numpy_reference(q.numpy(), k.float().numpy(), v.float().numpy(), mask=mask.numpy(),
                           chunk=1024, slopes=slopes.numpy())
    assert_close_np(got.numpy(), want)
    with torch.no_grad():
        k[:, :2048] = float("nan")
        v[:, :2048] = float("nan")
    assert torch.equal(attn.attention(q, k, v, attention_mask=mask, alibi_slopes=slopes,
                                      chunk=1024), got)


def test_alibi_slopes_intake(attn):
    """Slopes as a list, float64, float16 or a torch tensor give the same result."""
    rng = np.random.default_rng(37)
    q = rng.standard_normal((1, 4, 4, 16)).astype(np.float32)
    k = rng.standard_normal((1, 9, 2, 16)).astype(np.float32)
    slopes = alibi_slopes(4)
    want = attn.attention(q, k, k, alibi_slopes=slopes)
    for form in (slopes.tolist(), slopes.astype(np.float64), torch.from_numpy(slopes),
                 slopes.astype(np.float16), np.repeat(slopes, 2)[::2]):
        assert np.array_equal(attn.attention(q, k, k, alibi_slopes=form), want)
    assert not np.array_equal(attn.attention(q, k, k), want)


def test_alibi_and_chunk_bad_options(attn):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        attn.attention(q, k, v, chunk=-1)
    with pytest.raises(ValueError, match="chunk requires causal"):
        attn.attention(q, k, v, causal=False, chunk=2)
    with pytest.raises(ValueError, match=r"alibi_slopes: expected one slope per query head \(4\)"):
        attn.attention(q, k, v, alibi_slopes=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="alibi_slopes: expected 1 dimensions"):
        attn.attention(q, k, v, alibi_slopes=np.ones((4, 1), np.float32))
    with pytest.raises(ValueError, match=r"alibi_slopes: non-finite value .* at index \[2\]"):
        attn.attention(q, k, v, alibi_slopes=[0.5, 0.25, float("nan"), 0.1])
    with pytest.raises(ValueError, match="alibi_slopes: expected a floating-point dtype"):
        attn.attention(q, k, v, alibi_slopes=np.ones(4, np.int32))
    with pytest.raises(ValueError, match=r"alibi_slopes\[1\] must be finite"):
        attn.attention(q, k, v, alibi_slopes=[0.5, 1e300, 0.25, 0.1])  # inf as float32
