# SPDX-License-Identifier: Apache-2.0
"""Checks of the torch oracle itself (no attn binary needed).

Published numbers (reference page §2, §3) and internal consistency: the oracle must be right
before it can judge attn.
"""

from __future__ import annotations

import math

import pytest
import torch

import torch_reference as ref

DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
    "num_key_value_heads": 128, "num_hidden_layers": 61, "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000, "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
}

DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v2", "hidden_size": 2048, "num_attention_heads": 16,
    "num_key_value_heads": 16, "num_hidden_layers": 27, "q_lora_rank": None,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000, "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
}

LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
    "num_key_value_heads": 8, "num_hidden_layers": 32, "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def _randn(*shape, scale=1.0, gen=None):
    return torch.randn(*shape, dtype=torch.float64, generator=gen) * scale


def _random_weights(cfg, layer=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in ref.expected_weight_shapes(cfg, layer).items():
        if name.endswith("layernorm.weight"):
            out[name] = 1.0 + 0.1 * _randn(*shape, gen=gen)
        elif len(shape) == 2:
            out[name] = _randn(*shape, scale=shape[1] ** -0.5, gen=gen)
        else:
            out[name] = 0.1 * _randn(*shape, gen=gen)
    return out


# ------------------------------------------------------------------ published numbers


def test_yarn_correction_range_deepseek_v3():
    lo, hi = ref.yarn_correction_range(64, 10000.0, 4096, 32.0, 1.0)
    assert (lo, hi) == (10, 23)
    # And through the config parser.
    s = ref.parse_config(DEEPSEEK_V3)
    r = s.rope
    assert r.rotary_dim == 64 and r.interleaved and r.type == "yarn"
    assert ref.yarn_correction_range(r.rotary_dim, r.theta, r.original_max_position_embeddings,
                                     r.beta_fast, r.beta_slow) == (10, 23)


def test_yarn_inv_freq_ramp_v3():
    f = ref.inv_freq(DEEPSEEK_V3)
    th = 10000.0 ** (-2.0 * torch.arange(32, dtype=torch.float64) / 64)
    # i <= lo: extrapolation (unchanged); i >= hi: interpolation (θ/s); in between: linear ramp.
    assert torch.allclose(f[:11], th[:11], rtol=1e-15, atol=0)
    assert torch.allclose(f[23:], th[23:] / 40, rtol=1e-15, atol=0)
    i = 16
    ramp = (i - 10) / 13
    assert f[i].item() == pytest.approx(th[i].item() * (1 - ramp) + th[i].item() / 40 * ramp,
                                        rel=1e-14)


def test_softmax_scale_deepseek_v3():
    assert ref.softmax_scale(DEEPSEEK_V3) == pytest.approx(0.135234, abs=5e-7)
    assert ref.yarn_mscale(40, 1.0) == pytest.approx(1.368888, abs=1e-6)
    assert ref.attention_factor(DEEPSEEK_V3) == 1.0


def test_softmax_scale_deepseek_v2_lite():
    assert ref.softmax_scale(DEEPSEEK_V2_LITE) == pytest.approx(0.114721, abs=5e-7)
    assert ref.attention_factor(DEEPSEEK_V2_LITE) == 1.0
    s = ref.parse_config(DEEPSEEK_V2_LITE)
    assert s.q_lora_rank == 0


def test_softmax_scale_gqa_is_head_dim():
    assert ref.softmax_scale(LLAMA_31_8B) == pytest.approx(128 ** -0.5)
    cfg = dict(LLAMA_31_8B, head_dim=96)
    assert ref.softmax_scale(cfg) == pytest.approx(96 ** -0.5)


def test_llama3_inv_freq_formula():
    f = ref.inv_freq(LLAMA_31_8B)
    assert f.numel() == 64
    s, a, b, L = 8.0, 1.0, 4.0, 8192.0

    def theta(i):
        return 500000.0 ** (-2.0 * i / 128)

    # High frequency (wavelength < L/b = 2048): unchanged.
    assert f[0].item() == pytest.approx(1.0, rel=1e-15)
    assert f[10].item() == pytest.approx(theta(10), rel=1e-13)
    # Low frequency (wavelength > L/a = 8192): divided by the factor.
    assert f[63].item() == pytest.approx(theta(63) / 8, rel=1e-13)
    # Medium band: indices 29..34 for Llama 3.1.
    regimes = []
    for i in range(64):
        lam = 2 * math.pi / theta(i)
        regimes.append("high" if lam < L / b else "low" if lam > L / a else "mid")
    assert [i for i, r in enumerate(regimes) if r == "mid"] == [29, 30, 31, 32, 33, 34]
    i = 30
    lam = 2 * math.pi / theta(i)
    m = (L / lam - a) / (b - a)
    want = (1 - m) * theta(i) / s + m * theta(i)
    assert f[i].item() == pytest.approx(want, rel=1e-13)
    assert theta(i) / s < f[i].item() < theta(i)


def test_linear_scaling_divides():
    cfg = dict(LLAMA_31_8B, rope_scaling={"type": "linear", "factor": 4.0})
    th = ref.base_inv_freq(500000.0, 128)
    assert torch.allclose(ref.inv_freq(cfg), th / 4, rtol=1e-15, atol=0)


def test_yarn_attention_factor_variants():
    base = {"model_type": "qwen2", "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 1e6, "max_position_embeddings": 8192}
    qwen = dict(base, rope_scaling={"type": "yarn", "factor": 4.0,
                                    "original_max_position_embeddings": 2048})
    assert ref.attention_factor(qwen) == pytest.approx(0.1 * math.log(4.0) + 1)
    # GQA scale is never touched by yarn.
    assert ref.softmax_scale(qwen) == pytest.approx(64 ** -0.5)
    # Explicit attention_factor wins.
    expl = dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.3,
                                    "original_max_position_embeddings": 2048})
    assert ref.attention_factor(expl) == 1.3
    # Only one mscale key present -> mscale(s, 1).
    one = dict(base, rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 0.5,
                                   "original_max_position_embeddings": 2048})
    assert ref.attention_factor(one) == pytest.approx(0.1 * math.log(4.0) + 1)
    # Both present: ratio.
    both = dict(base, rope_scaling={"type": "yarn", "factor": 4.0, "mscale": 1.0,
                                    "mscale_all_dim": 0.5,
                                    "original_max_position_embeddings": 2048})
    want = (0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1)
    assert ref.attention_factor(both) == pytest.approx(want)
    # The factor multiplies cos and sin.
    pos = torch.tensor([[0, 7, 3000]])
    c, s = ref.rope_cos_sin(qwen, pos)
    assert torch.allclose(c * c + s * s, torch.full_like(c, ref.attention_factor(qwen) ** 2))


def test_yarn_lo_equals_hi_nudge():
    # L < 2π puts both ends at 0 after floor/ceil and clamping; hi gets +0.001.
    lo, hi = ref.yarn_correction_range(8, 10000.0, 4, 32.0, 1.0)
    assert lo == 0 and hi == pytest.approx(0.001)
    # Without truncation the raw (unrounded) values are used.
    lo, hi = ref.yarn_correction_range(64, 10000.0, 4096, 32.0, 1.0, truncate=False)
    assert 10 < lo < 11 and 22 < hi < 23


def test_rope_parameters_spelling_equivalent():
    newer = {k: v for k, v in LLAMA_31_8B.items() if k not in ("rope_scaling", "rope_theta")}
    newer["rope_parameters"] = dict(LLAMA_31_8B["rope_scaling"], rope_theta=500000.0)
    assert torch.equal(ref.inv_freq(newer), ref.inv_freq(LLAMA_31_8B))
    v3new = {k: v for k, v in DEEPSEEK_V3.items() if k != "rope_scaling"}
    rp = dict(DEEPSEEK_V3["rope_scaling"])
    rp["rope_type"] = rp.pop("type")
    v3new["rope_parameters"] = rp
    assert torch.equal(ref.inv_freq(v3new), ref.inv_freq(DEEPSEEK_V3))
    assert ref.softmax_scale(v3new) == ref.softmax_scale(DEEPSEEK_V3)


def test_partial_rotary_factor():
    cfg = dict(LLAMA_31_8B, partial_rotary_factor=0.5, rope_scaling=None)
    s = ref.parse_config(cfg)
    assert s.rope.rotary_dim == 64
    x = _randn(1, 3, 2, 128)
    c, sn = ref.rope_cos_sin(s, torch.tensor([[1, 2, 3]]))
    y = ref.apply_rope(x, c, sn, 64, False)
    assert torch.equal(y[..., 64:], x[..., 64:])
    assert not torch.allclose(y[..., :64], x[..., :64])


def test_unknown_model_type_rejected():
    with pytest.raises(ValueError):
        ref.parse_config(dict(LLAMA_31_8B, model_type="gpt2"))


def test_pairing_from_config():
    assert ref.parse_config(DEEPSEEK_V3).rope.interleaved is True
    assert ref.parse_config(dict(DEEPSEEK_V3, rope_interleave=False)).rope.interleaved is False
    assert ref.parse_config(LLAMA_31_8B).rope.interleaved is False


def test_qwen2_sliding_layers():
    cfg = {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 4, "use_sliding_window": True,
           "sliding_window": 4, "max_window_layers": 2}
    s = ref.parse_config(cfg)
    assert [s.window_for_layer(i) for i in range(4)] == [0, 0, 4, 4]
    s = ref.parse_config(dict(cfg, use_sliding_window=False))
    assert [s.window_for_layer(i) for i in range(4)] == [0, 0, 0, 0]
    assert s.qkv_bias and not s.o_bias


# ------------------------------------------------------------------ RoPE pairing identities


def test_rope_identity_at_position_zero():
    x = _randn(2, 4, 3, 16)
    c, s = ref.rope_cos_sin(LLAMA_31_8B, torch.zeros(2, 4, dtype=torch.int64))
    c, s = c[..., :8], s[..., :8]
    for il in (False, True):
        assert torch.equal(ref.apply_rope(x, c, s, 16, il), x)


def test_rope_relative_position_property():
    # q·k after RoPE depends only on the position difference (both pairings).
    spec = ref.parse_config(DEEPSEEK_V3)
    q, k = _randn(1, 1, 1, 64), _randn(1, 1, 1, 64)
    for il in (False, True):
        def dot(pq, pk):
            cq, sq = ref.rope_cos_sin(spec, torch.tensor([[pq]]))
            ck, sk = ref.rope_cos_sin(spec, torch.tensor([[pk]]))
            return (ref.apply_rope(q, cq, sq, 64, il) * ref.apply_rope(k, ck, sk, 64, il)).sum()
        assert dot(105, 100).item() == pytest.approx(dot(5005, 5000).item(), rel=1e-9)


def test_interleaved_equals_hf_deinterleave_then_rotate_half():
    # HF DeepSeek: de-interleave activations, then rotate-half; q·k equals interleaved pairs.
    spec = ref.parse_config(DEEPSEEK_V3)
    B, S, Hh, r = 1, 5, 3, 64
    q, k = _randn(B, S, Hh, r), _randn(B, S, Hh, r)
    c, s = ref.rope_cos_sin(spec, torch.arange(S)[None] * 37 + 11)
    qi, ki = ref.apply_rope(q, c, s, r, True), ref.apply_rope(k, c, s, r, True)

    def deint(x):
        return x.view(B, S, Hh, r // 2, 2).transpose(-1, -2).reshape(B, S, Hh, r)

    qh = ref.apply_rope(deint(q), c, s, r, False)
    kh = ref.apply_rope(deint(k), c, s, r, False)
    si = torch.einsum("bshd,bthd->bhst", qi, ki)
    sh = torch.einsum("bshd,bthd->bhst", qh, kh)
    assert torch.allclose(si, sh, rtol=1e-12, atol=1e-12)
    # And the two pairings are not interchangeable on the same activations.
    sw = torch.einsum("bshd,bthd->bhst", ref.apply_rope(q, c, s, r, False),
                      ref.apply_rope(k, c, s, r, False))
    assert (sw - si).abs().max() > 1e-2 * si.abs().max()


def test_llama_hf_permutation_equivalence():
    # HF converted Meta's Llama weights with a row permutation so that rotate-half on the
    # permuted weights equals interleaved pairs on the original ones.
    D, Hh, d = 64, 4, 16
    W = _randn(Hh * d, D)
    perm = W.view(Hh, d // 2, 2, D).transpose(1, 2).reshape(Hh * d, D)
    x = _randn(1, 6, D)
    pos = torch.arange(6)[None] * 3 + 1
    c, s = ref.rope_cos_sin(dict(LLAMA_31_8B, rope_scaling=None), pos)
    c, s = c[..., : d // 2], s[..., : d // 2]
    qm = ref.apply_rope((x @ W.T).view(1, 6, Hh, d), c, s, d, True)
    qh = ref.apply_rope((x @ perm.T).view(1, 6, Hh, d), c, s, d, False)
    sm = torch.einsum("bshd,bthd->bhst", qm, qm)
    sh = torch.einsum("bshd,bthd->bhst", qh, qh)
    assert torch.allclose(sm, sh, rtol=1e-12, atol=1e-10)


# ------------------------------------------------------------------ masks


def test_visible_mask_sliding_and_padding():
    vis = ref.visible_mask(1, 6, None, window=3)[0]
    for p in range(6):
        for t in range(6):
            assert bool(vis[p, t]) == (p - 3 < t <= p)
    am = torch.tensor([[0, 0, 1, 1, 1, 1]])
    vis = ref.visible_mask(1, 6, am, 0)[0]
    assert not vis[0].any() and not vis[1].any()
    assert vis[5].tolist() == [False, False, True, True, True, True]


def test_fully_masked_row_gives_zeros_not_nan():
    q = _randn(1, 3, 2, 4)
    k = _randn(1, 3, 2, 4)
    v = _randn(1, 3, 2, 4)
    vis = ref.visible_mask(1, 3, torch.tensor([[0, 1, 1]]), 0)
    o = ref.attend(q, k, v, vis, 0.5)
    assert torch.isfinite(o).all()
    assert torch.equal(o[0, 0], torch.zeros(2, 4, dtype=torch.float64))
    assert o[0, 1].abs().sum() > 0


# ------------------------------------------------------------------ layers


def _loop_gqa(spec, W, x, pos, layer=0, am=None):
    """A slow, explicit per-head loop implementation of the GQA layer."""
    p = ref.layer_prefix(layer)
    B, S, D = x.shape
    H, G, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    bias = (lambda n: W[p + n + ".bias"]) if spec.qkv_bias else (lambda n: 0.0)
    q = (x @ W[p + "q_proj.weight"].T + bias("q_proj")).view(B, S, H, d)
    k = (x @ W[p + "k_proj.weight"].T + bias("k_proj")).view(B, S, G, d)
    v = (x @ W[p + "v_proj.weight"].T + bias("v_proj")).view(B, S, G, d)
    c, s = ref.rope_cos_sin(spec, pos)
    q = ref.apply_rope(q, c, s, spec.rope.rotary_dim, spec.rope.interleaved)
    k = ref.apply_rope(k, c, s, spec.rope.rotary_dim, spec.rope.interleaved)
    out = torch.zeros(B, S, H * d, dtype=torch.float64)
    win = spec.window_for_layer(layer)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(S):
                ts = [t for t in range(S) if t <= i and (not win or t > i - win)
                      and (am is None or am[b, t] != 0)]
                if not ts:
                    continue
                sc = torch.stack([q[b, i, h] @ k[b, t, g] for t in ts]) / math.sqrt(d)
                pr = torch.softmax(sc, 0)
                out[b, i, h * d:(h + 1) * d] = sum(pr[j] * v[b, t, g] for j, t in enumerate(ts))
    y = out @ W[p + "o_proj.weight"].T
    if spec.o_bias:
        y = y + W[p + "o_proj.bias"]
    return y


@pytest.mark.parametrize("cfg", [
    {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
     "num_key_value_heads": 2, "rope_theta": 500000.0, "attention_bias": True,
     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    {"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4,
     "num_key_value_heads": 1, "head_dim": 24, "sliding_window": 3},
    {"model_type": "qwen2", "hidden_size": 48, "num_attention_heads": 6,
     "num_key_value_heads": 3, "rope_theta": 1e6, "max_position_embeddings": 256,
     "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
], ids=["llama3-bias", "mistral-mqa-window", "qwen2-yarn"])
def test_gqa_oracle_matches_loop(cfg):
    spec = ref.parse_config(cfg)
    W = _random_weights(cfg, seed=1)
    torch.manual_seed(0)
    x = _randn(2, 7, cfg["hidden_size"])
    pos = torch.stack([torch.arange(7) + 100, torch.arange(7) * 2 + 5])
    am = torch.tensor([[1] * 7, [0, 0, 1, 1, 0, 1, 1]])
    got = ref.gqa_forward(spec, W, x, pos, am, 0, spec.rope.interleaved)
    want = _loop_gqa(spec, W, x, pos, 0, am)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_gqa_oracle_matches_torch_multihead_attention():
    D, H = 64, 4
    cfg = {"model_type": "llama", "hidden_size": D, "num_attention_heads": H,
           "num_key_value_heads": H}
    W = _random_weights(cfg, seed=3)
    p = ref.layer_prefix(0)
    mha = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([W[p + "q_proj.weight"], W[p + "k_proj.weight"],
                                            W[p + "v_proj.weight"]]))
        mha.out_proj.weight.copy_(W[p + "o_proj.weight"])
    x = _randn(2, 9, D)
    causal = torch.triu(torch.ones(9, 9, dtype=torch.bool), 1)
    want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    got = ref.forward(cfg, W, x, torch.zeros(2, 9, dtype=torch.int64)).double()
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()


@pytest.mark.parametrize("cfg", [
    {"model_type": "deepseek_v3", "hidden_size": 96, "num_attention_heads": 4,
     "q_lora_rank": 40, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
     "v_head_dim": 12, "rope_theta": 10000, "max_position_embeddings": 1280,
     "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 32, "beta_fast": 32,
                      "beta_slow": 1}},
    {"model_type": "deepseek_v2", "hidden_size": 96, "num_attention_heads": 3,
     "q_lora_rank": None, "kv_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
     "v_head_dim": 16, "rope_theta": 10000, "max_position_embeddings": 1280,
     "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                      "original_max_position_embeddings": 32}},
], ids=["v3-like", "v2-lite-like"])
def test_mla_absorbed_equals_naive(cfg):
    W = _random_weights(cfg, seed=2)
    x = _randn(2, 8, cfg["hidden_size"])
    pos = torch.stack([torch.arange(8) + 300, torch.arange(8)])
    am = torch.tensor([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]])
    spec = ref.parse_config(cfg)
    naive = ref.mla_forward(spec, W, x, pos, am, 0, True, "naive")
    absorbed = ref.mla_forward(spec, W, x, pos, am, 0, True, "absorbed")
    assert torch.allclose(naive, absorbed, rtol=1e-11, atol=1e-11)
    # Left-padded rows are o_proj(0) = 0 (no bias in MLA).
    assert torch.equal(naive[1, :2], torch.zeros_like(naive[1, :2]))


def test_mla_naive_matches_explicit_per_head_loop():
    cfg = {"model_type": "deepseek_v3", "hidden_size": 48, "num_attention_heads": 2,
           "q_lora_rank": 20, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
           "v_head_dim": 6, "rms_norm_eps": 1e-6, "rope_theta": 10000,
           "max_position_embeddings": 1280,
           "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                            "original_max_position_embeddings": 32}}
    spec = ref.parse_config(cfg)
    W = _random_weights(cfg, seed=5)
    p = ref.layer_prefix(0)
    x = _randn(1, 5, 48)
    pos = torch.arange(5)[None] + 50
    got = ref.forward(cfg, W, x, pos).double()

    def rms(v, w):
        return v / torch.sqrt((v * v).mean() + 1e-6) * w

    c_, s_ = ref.rope_cos_sin(spec, pos)

    def rot_interleaved(vec, i):
        outv = vec.clone()
        for j in range(vec.numel() // 2):
            a, b = vec[2 * j], vec[2 * j + 1]
            outv[2 * j] = a * c_[0, i, j] - b * s_[0, i, j]
            outv[2 * j + 1] = a * s_[0, i, j] + b * c_[0, i, j]
        return outv

    H, dn, dr, dv, rk = 2, 8, 4, 6, 16
    scale = (dn + dr) ** -0.5 * ref.yarn_mscale(40, 1.0) ** 2
    out = torch.zeros(5, H * dv, dtype=torch.float64)
    Q, K, V = [], [], []
    for i in range(5):
        cq = rms(W[p + "q_a_proj.weight"] @ x[0, i], W[p + "q_a_layernorm.weight"])
        qv = (W[p + "q_b_proj.weight"] @ cq).view(H, dn + dr)
        kv = W[p + "kv_a_proj_with_mqa.weight"] @ x[0, i]
        c = rms(kv[:rk], W[p + "kv_a_layernorm.weight"])
        kpe = rot_interleaved(kv[rk:], i)
        kvb = (W[p + "kv_b_proj.weight"] @ c).view(H, dn + dv)
        Q.append([torch.cat([qv[h, :dn], rot_interleaved(qv[h, dn:], i)]) for h in range(H)])
        K.append([torch.cat([kvb[h, :dn], kpe]) for h in range(H)])
        V.append([kvb[h, dn:] for h in range(H)])
    for i in range(5):
        for h in range(H):
            sc = torch.stack([Q[i][h] @ K[t][h] for t in range(i + 1)]) * scale
            pr = torch.softmax(sc, 0)
            out[i, h * dv:(h + 1) * dv] = sum(pr[t] * V[t][h] for t in range(i + 1))
    want = out @ W[p + "o_proj.weight"].T
    assert (got[0] - want).abs().max() <= 1e-6 * want.abs().max()
