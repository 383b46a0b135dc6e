# SPDX-License-Identifier: Apache-2.0
"""The GQA model families beyond llama/mistral/qwen2 against the float64 oracle: Qwen3 and
Qwen3-MoE (per-head q/k RMSNorm), OLMo 2 (RMSNorm over the whole q and k projections), Granite
(softmax scale = attention_multiplier), Mixtral (Mistral's attention, its own defaults) and
Qwen2-MoE (qkv_bias, its own sliding-window layer pattern); weight-name checks (unused tensors
are errors, rotary_emb.inv_freq is not); and the original Falcon-40B ("RefinedWeb") config.

The oracle (torch_reference.py, `_parse_gqa_family`) was written from transformers' modeling and
configuration code for each family; `hf_transcription` below re-states transformers' eager
attention (rotate_half, repeat_kv, additive masks, [B, H, S, d] layout) a second time, so the
oracle is itself checked against HF's formulation before it judges attn.

Metric: test_oracle's `assert_matches`, max|attn - ref| <= 1e-4 * max|ref| (fp32 weights).
Every test that takes `cli` runs through the CLI binary and through the Python module.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import torch

import torch_reference as ref
from conftest import REPO, save_tensors
from test_oracle import (assert_matches, hf_positions_from_mask, left_pad_mask,
                         make_hidden, make_positions, no_visible_key_rows, run_case)


def _load(name):
    return json.loads((REPO / "configs" / f"tiny-{name}.json").read_text())


QWEN3 = _load("qwen3")            # head_dim 48 != 128/4, G 2 < H 4, window 5 on layers >= 2
QWEN3_MOE = _load("qwen3-moe")    # head_dim 64, attention_bias, window 4 on every layer
OLMO2 = _load("olmo2")            # q_norm [128], k_norm [64]
GRANITE = _load("granite")        # attention_multiplier 0.0625 (head_dim^-0.5 = 0.177)
MIXTRAL = _load("mixtral")        # window 6 on every layer, theta 1e6
QWEN2_MOE = _load("qwen2-moe")    # qkv_bias, window 4 on layers 0 and 2

FAMILIES = {"qwen3": QWEN3, "qwen3-moe": QWEN3_MOE, "olmo2": OLMO2, "granite": GRANITE,
            "mixtral": MIXTRAL, "qwen2-moe": QWEN2_MOE}

# Variants that move the defaults and the layer patterns.
QWEN3_LAYER_TYPES = dict(QWEN3, layer_types=["sliding_attention", "full_attention",
                                              "sliding_attention", "full_attention"])
QWEN2_MOE_LAYER_TYPES = dict(QWEN2_MOE, layer_types=["full_attention", "sliding_attention",
                                                      "full_attention", "sliding_attention"])
# Qwen2MoeConfig default max_window_layers = 28: every even layer of 4 slides.
QWEN2_MOE_DEFAULT_MWL = {k: v for k, v in QWEN2_MOE.items() if k != "max_window_layers"}
QWEN2_MOE_NO_BIAS = dict(QWEN2_MOE, qkv_bias=False)
QWEN3_BIAS_NO_WINDOW = dict(QWEN3, attention_bias=True, use_sliding_window=False)
OLMO2_BIAS = dict(OLMO2, attention_bias=True)
GRANITE_BIAS_MQA = dict(GRANITE, attention_bias=True, num_key_value_heads=1)
# GraniteConfig default attention_multiplier = 1.0: the scale is 1, not head_dim^-0.5.
GRANITE_DEFAULT_MULTIPLIER = {k: v for k, v in GRANITE.items() if k != "attention_multiplier"}
# MixtralConfig defaults: sliding_window None (full attention), rope_theta 1e6.
MIXTRAL_DEFAULTS = {k: v for k, v in MIXTRAL.items() if k not in ("sliding_window", "rope_theta")}
MIXTRAL_NULL_WINDOW = dict(MIXTRAL, sliding_window=None)


# ============================================================================ oracle self-checks
# (no attn needed)


def _oracle_weights(cfg, layer=0, seed=0):
    """Random weights of the oracle's expected shapes; norm scales around 1, as checkpoints."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in ref.expected_weight_shapes(cfg, layer).items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.2 * torch.randn(*shape, dtype=torch.float64, generator=gen)
        elif len(shape) == 2:
            out[name] = torch.randn(*shape, dtype=torch.float64, generator=gen) * shape[1] ** -0.5
        else:
            out[name] = 0.1 * torch.randn(*shape, dtype=torch.float64, generator=gen)
    return out


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _repeat_kv(h, n_rep):
    b, g, s, d = h.shape
    return h[:, :, None, :, :].expand(b, g, n_rep, s, d).reshape(b, g * n_rep, s, d)


def _hf_rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def hf_transcription(cfg, W, x, position_ids, attention_mask=None, layer=0, norm_mode=None):
    """transformers' attention forward for these families, restated from the model files (not
    from torch_reference) in float64, with config defaults as the config classes define them.
    Default RoPE only. Rows with no visible key are not meaningful here (HF: NaN or uniform).

    norm_mode overrides where q/k norms go: "per_head" (Qwen3), "full" (OLMo 2), "none", or
    "per_head_full_weights" (a wrong OLMo 2: the [H·d] scales applied head by head)."""
    mt = cfg["model_type"]
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    G = cfg.get("num_key_value_heads") or H
    d = cfg.get("head_dim") or (128 if mt == "qwen3" else D // H)
    p = ref.layer_prefix(layer)
    B, S, _ = x.shape
    x = x.double()

    def lin(name, t, bias):
        y = t @ W[p + name + ".weight"].double().T
        return y + W[p + name + ".bias"].double() if bias else y

    qkv_bias = (cfg.get("qkv_bias", True) if mt == "qwen2_moe"
                else False if mt == "mixtral" else cfg.get("attention_bias", False))
    o_bias = False if mt in ("qwen2_moe", "mixtral") else cfg.get("attention_bias", False)
    eps = cfg.get("rms_norm_eps", 1e-5 if mt == "olmo2" else 1e-6)
    if norm_mode is None:
        norm_mode = {"qwen3": "per_head", "qwen3_moe": "per_head", "olmo2": "full"}.get(mt,
                                                                                      "none")
    q = lin("q_proj", x, qkv_bias)
    k = lin("k_proj", x, qkv_bias)
    v = lin("v_proj", x, qkv_bias)
    qw = W.get(p + "q_norm.weight")
    kw = W.get(p + "k_norm.weight")
    if norm_mode == "full":  # Olmo2Attention: q_norm(q_proj(x)) before .view(hidden_shape)
        q, k = _hf_rms(q, qw.double(), eps), _hf_rms(k, kw.double(), eps)
    q = q.view(B, S, -1, d)
    k = k.view(B, S, -1, d)
    if norm_mode == "per_head":  # Qwen3Attention: q_norm(q_proj(x).view(hidden_shape))
        q, k = _hf_rms(q, qw.double(), eps), _hf_rms(k, kw.double(), eps)
    elif norm_mode == "per_head_full_weights":
        q = _hf_rms(q, qw.double().view(H, d), eps)
        k = _hf_rms(k, kw.double().view(G, d), eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = v.view(B, S, -1, d).transpose(1, 2)
    theta = cfg.get("rope_theta", 1e6 if mt == "mixtral" else 1e4)
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = position_ids.double()[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k, v = _repeat_kv(k, H // G), _repeat_kv(v, H // G)
    scaling = cfg.get("attention_multiplier", 1.0) if mt == "granite" else d ** -0.5
    # The layer's window, per the config classes' __post_init__ (see torch_reference).
    window = None
    if mt == "mixtral":
        window = cfg.get("sliding_window")
    elif cfg.get("use_sliding_window", False) and mt in ("qwen3", "qwen3_moe", "qwen2_moe"):
        sw = cfg.get("sliding_window", 4096)
        if mt == "qwen3_moe":
            window = sw
        else:
            types = cfg.get("layer_types")
            if types is None:
                mwl = cfg.get("max_window_layers", 28)
                types = ["sliding_attention" if (
                    (sw is not None and i >= mwl) if mt == "qwen3"
                    else ((i + 1) % 2 and i < mwl)) else "full_attention"
                    for i in range(cfg["num_hidden_layers"])]
            window = sw if types[layer] == "sliding_attention" else None
    q_idx = torch.arange(S)[:, None]
    kv_idx = torch.arange(S)[None, :]
    allowed = kv_idx <= q_idx
    if window:
        allowed = allowed & (kv_idx > q_idx - window)
    allowed = allowed[None, None].expand(B, 1, S, S)
    if attention_mask is not None:
        allowed = allowed & (attention_mask[:, None, None, :] != 0)
    additive = torch.zeros(B, 1, S, S, dtype=torch.float64).masked_fill(
        ~allowed, torch.finfo(torch.float64).min)
    w = torch.softmax(q @ k.transpose(2, 3) * scaling + additive, dim=-1)
    o = (w @ v).transpose(1, 2).reshape(B, S, -1)
    return lin("o_proj", o, o_bias)


TRANSCRIPTION_CASES = [
    ("qwen3-layer1-full", QWEN3, 1), ("qwen3-layer3-window", QWEN3, 3),
    ("qwen3-layer-types-layer2", QWEN3_LAYER_TYPES, 2),
    ("qwen3-bias", QWEN3_BIAS_NO_WINDOW, 0),
    ("qwen3-moe-layer0-window", QWEN3_MOE, 0), ("olmo2", OLMO2, 1), ("olmo2-bias", OLMO2_BIAS, 0),
    ("granite", GRANITE, 1), ("granite-default-multiplier", GRANITE_DEFAULT_MULTIPLIER, 0),
    ("granite-bias-mqa", GRANITE_BIAS_MQA, 0),
    ("mixtral", MIXTRAL, 1), ("mixtral-defaults", MIXTRAL_DEFAULTS, 0),
    ("qwen2-moe-layer2-window", QWEN2_MOE, 2), ("qwen2-moe-layer3-full", QWEN2_MOE, 3),
    ("qwen2-moe-layer-types-layer1", QWEN2_MOE_LAYER_TYPES, 1),
    ("qwen2-moe-default-mwl-layer2", QWEN2_MOE_DEFAULT_MWL, 2),
    ("qwen2-moe-no-bias", QWEN2_MOE_NO_BIAS, 0),
]


@pytest.mark.parametrize("cfg,layer", [(c, l) for _, c, l in TRANSCRIPTION_CASES],
                         ids=[i for i, _, _ in TRANSCRIPTION_CASES])
def test_oracle_equals_hf_transcription(cfg, layer):
    B, S = 2, 12
    W = _oracle_weights(cfg, layer, seed=3)
    x = make_hidden(B, S, cfg["hidden_size"], 4)
    pos = make_positions(B, S, [3000, 7])
    mask = left_pad_mask(B, S, [0, 2])
    want = hf_transcription(cfg, W, x, pos, mask, layer)
    got = ref.forward(cfg, W, x, pos, mask, layer=layer, out_dtype=torch.float64)
    rows = ~no_visible_key_rows(ref.parse_config(cfg), layer, mask, S)
    err = (got - want)[rows].abs().max().item()
    assert err <= 1e-12 * want[rows].abs().max().item(), err


def test_oracle_parse_rules():
    """The config defaults and layer patterns, as the config classes define them."""
    s = ref.parse_config({k: v for k, v in QWEN3.items() if k != "head_dim"})
    assert s.head_dim == 128  # Qwen3Config.head_dim default
    s = ref.parse_config({k: v for k, v in QWEN3_MOE.items() if k != "head_dim"})
    assert s.head_dim == 32   # Qwen3MoeConfig has no head_dim: D/H
    assert [ref.parse_config(QWEN3).window_for_layer(i) for i in range(4)] == [0, 0, 5, 5]
    assert [ref.parse_config(QWEN3_LAYER_TYPES).window_for_layer(i)
            for i in range(4)] == [5, 0, 5, 0]
    assert [ref.parse_config(dict(QWEN3_LAYER_TYPES, use_sliding_window=False)).window_for_layer(
        i) for i in range(4)] == [0, 0, 0, 0]
    # Qwen3Config defaults: sliding_window 4096 on layers >= max_window_layers (28).
    big = dict({k: v for k, v in QWEN3.items() if k not in ("sliding_window",
                                                            "max_window_layers")},
               num_hidden_layers=30)
    assert [ref.parse_config(big).window_for_layer(i) for i in (0, 27, 28, 29)] == \
        [0, 0, 4096, 4096]
    # Qwen3-MoE: every layer, max_window_layers ignored; nothing without use_sliding_window.
    assert [ref.parse_config(QWEN3_MOE).window_for_layer(i) for i in range(2)] == [4, 4]
    assert ref.parse_config(dict(QWEN3_MOE, use_sliding_window=False)).window_for_layer(1) == 0
    # Qwen2-MoE: (i + 1) % 2 and i < max_window_layers.
    assert [ref.parse_config(QWEN2_MOE).window_for_layer(i) for i in range(4)] == [4, 0, 4, 0]
    assert [ref.parse_config(dict(QWEN2_MOE, max_window_layers=1)).window_for_layer(i)
            for i in range(4)] == [4, 0, 0, 0]
    assert [ref.parse_config(QWEN2_MOE_LAYER_TYPES).window_for_layer(i)
            for i in range(4)] == [0, 4, 0, 4]
    assert ref.parse_config(dict(QWEN2_MOE, use_sliding_window=False)).window_for_layer(0) == 0
    s = ref.parse_config(QWEN2_MOE)
    assert (s.qkv_bias, s.o_bias) == (True, False)
    s = ref.parse_config({k: v for k, v in QWEN2_MOE.items() if k != "qkv_bias"})
    assert (s.qkv_bias, s.o_bias) == (True, False)
    # Mixtral: no window and theta 1e6 by default; null window = none.
    s = ref.parse_config(MIXTRAL_DEFAULTS)
    assert (s.window_for_layer(0), s.rope.theta) == (0, 1e6)
    assert ref.parse_config(MIXTRAL_NULL_WINDOW).window_for_layer(1) == 0
    assert ref.parse_config(MIXTRAL).window_for_layer(1) == 6
    # Granite's scale; OLMo 2 / Qwen3 norm eps defaults.
    assert ref.softmax_scale(GRANITE) == 0.0625
    assert ref.softmax_scale(GRANITE_DEFAULT_MULTIPLIER) == 1.0
    assert ref.parse_config({k: v for k, v in OLMO2.items()
                             if k != "rms_norm_eps"}).qk_norm_eps == 1e-5
    assert ref.parse_config({k: v for k, v in QWEN3.items()
                             if k != "rms_norm_eps"}).qk_norm_eps == 1e-6
    shapes = ref.expected_weight_shapes(OLMO2, 0)
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (128,)
    assert shapes["model.layers.0.self_attn.k_norm.weight"] == (64,)
    shapes = ref.expected_weight_shapes(QWEN3, 0)
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (48,)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (192, 128)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _variant_outputs(cfg, W, layer, S=12):
    x = make_hidden(2, S, cfg["hidden_size"], 8)
    pos = make_positions(2, S, [900, 4])
    return x, pos, ref.forward(cfg, W, x, pos, None, layer=layer)


FEATURE_CASES = [
    # id, config, layer, how the wrong spec differs
    ("qwen3-no-qk-norm", QWEN3, 1, lambda s: replace(s, qk_norm="")),
    ("qwen3-moe-no-qk-norm", QWEN3_MOE, 0, lambda s: replace(s, qk_norm="")),
    ("olmo2-no-qk-norm", OLMO2, 0, lambda s: replace(s, qk_norm="")),
    ("granite-head-dim-scale", GRANITE, 0, lambda s: replace(s, scale_override=None)),
    ("qwen3-window-ignored", QWEN3, 3, lambda s: replace(s, sliding_window=0)),
    ("qwen3-moe-window-ignored", QWEN3_MOE, 0, lambda s: replace(s, sliding_window=0)),
    ("mixtral-window-ignored", MIXTRAL, 1, lambda s: replace(s, sliding_window=0)),
    ("qwen2-moe-window-ignored", QWEN2_MOE, 2, lambda s: replace(s, sliding_window=0)),
    ("qwen2-moe-no-qkv-bias", QWEN2_MOE, 1, lambda s: replace(s, qkv_bias=False)),
    ("mixtral-theta-1e4", MIXTRAL_DEFAULTS, 0,
     lambda s: replace(s, rope=replace(s.rope, theta=10000.0))),
]


@pytest.mark.parametrize("cfg,layer,wrong", [(c, l, w) for _, c, l, w in FEATURE_CASES],
                         ids=[i for i, _, _, _ in FEATURE_CASES])
def test_oracle_features_matter(cfg, layer, wrong):
    """Each family feature moves the output by far more than the tolerance, so the forward
    tests below can fail when attn leaves it out."""
    W = _oracle_weights(cfg, layer, seed=5)
    x, pos, want = _variant_outputs(cfg, W, layer)
    other = ref.forward(wrong(ref.parse_config(cfg)), W, x, pos, None, layer=layer)
    assert _rel(other, want) > 1e-2


def test_oracle_olmo2_whole_vs_per_head_norm_matters():
    """OLMo 2 normalises the whole projection: the same scales applied head by head (Qwen3's
    way) give a different layer."""
    W = _oracle_weights(OLMO2, 0, seed=6)
    x = make_hidden(2, 10, OLMO2["hidden_size"], 9)
    pos = make_positions(2, 10, [50, 0])
    right = hf_transcription(OLMO2, W, x, pos)
    wrong = hf_transcription(OLMO2, W, x, pos, norm_mode="per_head_full_weights")
    assert _rel(ref.forward(OLMO2, W, x, pos, out_dtype=torch.float64), right) < 1e-12
    assert _rel(wrong, right) > 1e-2


def test_oracle_norm_before_rope_matters():
    """Qwen3 normalises before RoPE. (RMSNorm with non-uniform scales does not commute with the
    rotation, so normalising after RoPE is a different layer.)"""
    W = _oracle_weights(QWEN3, 1, seed=7)
    x = make_hidden(1, 9, QWEN3["hidden_size"], 10)
    pos = make_positions(1, 9, 1234)
    s = ref.parse_config(QWEN3)
    want = ref.forward(s, W, x, pos, layer=1, out_dtype=torch.float64)
    # After RoPE instead: rotate first, then normalise (computed by hand here).
    p = ref.layer_prefix(1)
    H, G, d = s.num_heads, s.num_kv_heads, s.head_dim
    xd = x.double()
    q = (xd @ W[p + "q_proj.weight"].T).view(1, 9, H, d)
    k = (xd @ W[p + "k_proj.weight"].T).view(1, 9, G, d)
    v = (xd @ W[p + "v_proj.weight"].T).view(1, 9, G, d)
    cos, sin = ref.rope_cos_sin(s, pos)
    q = ref.rms_norm(ref.apply_rope(q, cos, sin, d, False), W[p + "q_norm.weight"], 1e-6)
    k = ref.rms_norm(ref.apply_rope(k, cos, sin, d, False), W[p + "k_norm.weight"], 1e-6)
    vis = ref.visible_mask(1, 9, None, 0)
    o = ref.attend(q, k.repeat_interleave(H // G, 2), v.repeat_interleave(H // G, 2), vis,
                   d ** -0.5).reshape(1, 9, H * d)
    after = o @ W[p + "o_proj.weight"].T
    assert _rel(after, want) > 1e-3


# ============================================================================ random-weights


SHAPE_CASES = {
    **FAMILIES,
    "qwen3-bias": QWEN3_BIAS_NO_WINDOW, "olmo2-bias": OLMO2_BIAS,
    "granite-bias-mqa": GRANITE_BIAS_MQA, "qwen2-moe-no-bias": QWEN2_MOE_NO_BIAS,
    # Qwen3Config.head_dim defaults to 128 (not hidden/heads = 32).
    "qwen3-default-head-dim": {k: v for k, v in QWEN3.items() if k != "head_dim"},
    # Qwen3MoeConfig has no head_dim field: hidden/heads.
    "qwen3-moe-default-head-dim": {k: v for k, v in QWEN3_MOE.items() if k != "head_dim"},
}


@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_random_weights_names_and_shapes(cli, name):
    cfg = SHAPE_CASES[name]
    _, _, W = cli.random_weights(cfg, seed=7, layer=1)
    want = ref.expected_weight_shapes(cfg, 1)
    have = {k: tuple(v.shape) for k, v in W.items()}
    assert have == want
    for k, v in W.items():
        v = v.double()
        assert torch.isfinite(v).all() and v.abs().max() > 0, k
        if k.endswith("_norm.weight"):
            # RMSNorm-like scales around 1, not projection-sized values around 0.
            assert 0.5 < v.mean() < 1.5, (k, v.mean().item())


# ============================================================================ forward vs oracle


FORWARD_CASES = [
    # id, config, layer, run_case kwargs (starts far past 0)
    ("qwen3-layer1-full", QWEN3, 1, dict(B=2, S=12, starts=[7000, 31])),
    ("qwen3-layer3-window5", QWEN3, 3, dict(B=2, S=12, starts=[7000, 31])),
    ("qwen3-layer-types-layer0-window", QWEN3_LAYER_TYPES, 0, dict(B=1, S=12, starts=500)),
    ("qwen3-layer-types-layer3-full", QWEN3_LAYER_TYPES, 3, dict(B=1, S=12, starts=500)),
    ("qwen3-bias", QWEN3_BIAS_NO_WINDOW, 0, dict(B=2, S=9, starts=[20000, 3])),
    ("qwen3-default-head-dim-128", SHAPE_CASES["qwen3-default-head-dim"], 1,
     dict(B=1, S=7, starts=300)),
    ("qwen3-moe-layer0-window4", QWEN3_MOE, 0, dict(B=2, S=11, starts=[4000, 0])),
    ("qwen3-moe-layer1-window4", QWEN3_MOE, 1, dict(B=2, S=11, starts=[4000, 0])),
    ("olmo2", OLMO2, 1, dict(B=2, S=10, starts=[3000, 9])),
    ("olmo2-bias", OLMO2_BIAS, 0, dict(B=1, S=10, starts=77)),
    ("granite", GRANITE, 1, dict(B=2, S=10, starts=[60000, 2])),
    ("granite-default-multiplier-1.0", GRANITE_DEFAULT_MULTIPLIER, 0,
     dict(B=1, S=10, starts=123)),
    ("granite-bias-mqa", GRANITE_BIAS_MQA, 0, dict(B=2, S=8, starts=[10, 500])),
    ("mixtral-layer0-window6", MIXTRAL, 0, dict(B=2, S=14, starts=[9000, 1])),
    ("mixtral-layer1-window6", MIXTRAL, 1, dict(B=1, S=14, starts=9000)),
    ("mixtral-defaults-theta1e6-no-window", MIXTRAL_DEFAULTS, 1, dict(B=2, S=14,
                                                                      starts=[20000, 5])),
    ("mixtral-null-window", MIXTRAL_NULL_WINDOW, 0, dict(B=1, S=14, starts=64)),
    ("qwen2-moe-layer0-window4", QWEN2_MOE, 0, dict(B=2, S=12, starts=[5000, 40])),
    ("qwen2-moe-layer1-full", QWEN2_MOE, 1, dict(B=2, S=12, starts=[5000, 40])),
    ("qwen2-moe-layer2-window4", QWEN2_MOE, 2, dict(B=1, S=12, starts=5000)),
    ("qwen2-moe-layer3-full", QWEN2_MOE, 3, dict(B=1, S=12, starts=5000)),
    ("qwen2-moe-layer-types-layer1-window", QWEN2_MOE_LAYER_TYPES, 1, dict(B=1, S=12,
                                                                          starts=80)),
    ("qwen2-moe-layer-types-layer2-full", QWEN2_MOE_LAYER_TYPES, 2, dict(B=1, S=12, starts=80)),
    ("qwen2-moe-default-mwl-layer2-window", QWEN2_MOE_DEFAULT_MWL, 2, dict(B=1, S=12,
                                                                          starts=80)),
    ("qwen2-moe-no-qkv-bias", QWEN2_MOE_NO_BIAS, 1, dict(B=2, S=9, starts=[0, 800])),
]


@pytest.mark.parametrize("cfg,layer,kw", [(c, l, k) for _, c, l, k in FORWARD_CASES],
                         ids=[i for i, _, _, _ in FORWARD_CASES])
def test_forward_matches_oracle(cli, cfg, layer, kw):
    _, wpath, W = cli.random_weights(cfg, seed=11, layer=layer)
    assert {k: tuple(v.shape) for k, v in W.items()} == ref.expected_weight_shapes(cfg, layer)
    got, want, _, _ = run_case(cli, cfg, seed=11, layer=layer, weights=(wpath, W), **kw)
    assert_matches(got, want, f"{cfg['model_type']} layer {layer}")


def _zero_row_value(cfg, W, layer):
    spec = ref.parse_config(cfg)
    if spec.o_bias:
        return W[ref.layer_prefix(layer) + "o_proj.bias"].float()
    return torch.zeros(cfg["hidden_size"])


PADDING_CASES = [("qwen3-layer3-window", QWEN3, 3), ("qwen3-moe", QWEN3_MOE, 1),
                 ("olmo2", OLMO2, 0), ("granite", GRANITE, 0), ("mixtral", MIXTRAL, 1),
                 ("qwen2-moe-layer0-window", QWEN2_MOE, 0), ("qwen2-moe-layer1", QWEN2_MOE, 1)]


@pytest.mark.parametrize("cfg,layer", [(c, l) for _, c, l in PADDING_CASES],
                         ids=[i for i, _, _ in PADDING_CASES])
def test_left_padding_mask(cli, cfg, layer):
    """Left padding with HF's positions (cumsum - 1), a sequence starting far past 0."""
    B, S = 3, 12
    mask = left_pad_mask(B, S, [0, 3, 7])
    pos = hf_positions_from_mask(mask)
    pos[0] += 6000
    cpath, wpath, W = cli.random_weights(cfg, seed=41, layer=layer)
    x = make_hidden(B, S, cfg["hidden_size"], 42)
    got = cli.forward(cpath, wpath, cli.write_input(x, pos, mask), layer=layer)
    want = ref.forward(cfg, W, x, pos, mask, layer=layer)
    assert_matches(got, want, "left padding")
    rows = no_visible_key_rows(ref.parse_config(cfg), layer, mask, S)
    assert int(rows.sum()) == 10
    value = _zero_row_value(cfg, W, layer)
    sel = got[rows]
    err = (sel.double() - value.double()[None]).abs().max().item()
    assert err <= 1e-6 * max(value.abs().max().item(), 1.0), (
        f"fully masked rows differ from o_proj(0) by {err:.3e}")


PREFILL_CASES = [("qwen3-layer3-window5", QWEN3, 3), ("qwen3-layer1-full", QWEN3, 1),
                 ("qwen3-moe", QWEN3_MOE, 1), ("olmo2", OLMO2, 1), ("granite", GRANITE, 0),
                 ("mixtral", MIXTRAL, 1), ("qwen2-moe-layer0-window", QWEN2_MOE, 0),
                 ("qwen2-moe-layer3-full", QWEN2_MOE, 3)]


@pytest.mark.parametrize("cfg,layer", [(c, l) for _, c, l in PREFILL_CASES],
                         ids=[i for i, _, _ in PREFILL_CASES])
def test_prefill_then_decode(cli, cfg, layer):
    """--prefill N: N tokens in one call, the rest one decode step each through the KV cache
    (past the window for the windowed layers), with left padding and far positions."""
    B, S = 2, 14
    mask = left_pad_mask(B, S, [0, 3])
    pos = hf_positions_from_mask(mask)
    pos[0] += 9000
    cpath, wpath, W = cli.random_weights(cfg, seed=81, layer=layer)
    x = make_hidden(B, S, cfg["hidden_size"], 82)
    inp = cli.write_input(x, pos, mask)
    want = ref.forward(cfg, W, x, pos, mask, layer=layer)
    full = cli.forward(cpath, wpath, inp, layer=layer)
    assert_matches(full, want, "full forward")
    for n in (1, 5, 13):
        pre = cli.forward(cpath, wpath, inp, layer=layer, prefill=n)
        assert_matches(pre, want, f"--prefill {n}")


@pytest.mark.parametrize("cfg,default_eps", [
    ({k: v for k, v in QWEN3.items() if k != "rms_norm_eps"}, 1e-6),
    ({k: v for k, v in OLMO2.items() if k != "rms_norm_eps"}, 1e-5),
    (dict(QWEN3_MOE, rms_norm_eps=1e-3), None),
    (dict(OLMO2, rms_norm_eps=1e-3), None),
], ids=["qwen3-default-1e-6", "olmo2-default-1e-5", "qwen3-moe-1e-3", "olmo2-1e-3"])
def test_qk_norm_eps(cli, cfg, default_eps):
    """The q/k norms' eps is rms_norm_eps, or the config class's default when absent (Qwen3 1e-6,
    OLMo 2 1e-5). q/k projections scaled by 1e-3 make mean(q²) ~ 1e-7, where the eps decides.
    (Layer 1: windowed in tiny-qwen3-moe under every reading of its window rule.)"""
    layer = 1
    _, _, W = cli.random_weights(cfg, seed=29, layer=layer)
    p = ref.layer_prefix(layer)
    for name in ("q_proj.weight", "k_proj.weight"):
        W[p + name] = W[p + name] * 1e-3
    wpath = save_tensors(cli.dir / "small_qk.safetensors", W)
    got, want, _, _ = run_case(cli, cfg, B=2, S=8, seed=29, starts=[40, 0], layer=layer,
                               weights=(wpath, W))
    assert_matches(got, want, "q/k norm eps")
    spec = ref.parse_config(cfg)
    other_eps = 1e-6 if spec.qk_norm_eps != 1e-6 else 1e-5
    x = make_hidden(2, 8, cfg["hidden_size"], 29 + 1000)
    other = ref.forward(replace(spec, qk_norm_eps=other_eps), W, x,
                        make_positions(2, 8, [40, 0]), layer=layer)
    assert _rel(other, want) > 1e-2, "the eps does not matter on these weights"
    if default_eps is not None:
        assert spec.qk_norm_eps == default_eps


def test_features_matter_on_attn_weights(cli):
    """On the weights attn writes (norm scales around 1), leaving out the q/k norm or Granite's
    multiplier moves the output by more than 1e-2 relative, i.e. 100x the tolerance."""
    for cfg, layer, wrong in [(QWEN3, 1, lambda s: replace(s, qk_norm="")),
                              (QWEN3_MOE, 1, lambda s: replace(s, qk_norm="")),
                              (OLMO2, 0, lambda s: replace(s, qk_norm="")),
                              (GRANITE, 0, lambda s: replace(s, scale_override=None))]:
        got, want, W, paths = run_case(cli, cfg, B=2, S=10, seed=13, starts=[700, 0],
                                       layer=layer)
        assert_matches(got, want, cfg["model_type"])
        other = ref.forward(wrong(ref.parse_config(cfg)), W, paths["x"], paths["pos"],
                            layer=layer)
        assert _rel(other, got) > 1e-2, cfg["model_type"]


# ============================================================================ bad input


def _assert_input_error(res, *needles):
    assert res.returncode == 2, "expected exit code 2\n" + res.describe()
    assert res.stderr.strip(), "no message on stderr\n" + res.describe()
    for n in needles:
        assert n in res.stderr, f"stderr does not name {n!r}\n" + res.describe()


def _forward_res(cli, cfg, W, layer=0, S=4):
    cpath = cli.write_config(cfg)
    wpath = save_tensors(cli.path("weights", ".safetensors"), W)
    inp = cli.write_input(make_hidden(1, S, cfg["hidden_size"], 3))
    out = cli.path("out", ".safetensors")
    return cli.run(*cli.forward_args(cpath, wpath, inp, out, layer=layer)), out


LLAMA_SAME_SHAPES = {k: v for k, v in QWEN3.items()
                     if k not in ("use_sliding_window", "sliding_window", "max_window_layers")}
LLAMA_SAME_SHAPES["model_type"] = "llama"


def test_qwen3_weights_with_llama_config_name_a_norm(cli):
    """A Qwen3 checkpoint run as llama: its q/k norms are not part of a llama layer. The message
    names one of them (which one first is attn's choice)."""
    _, _, W = cli.random_weights(QWEN3, seed=1, layer=0)
    res, out = _forward_res(cli, LLAMA_SAME_SHAPES, W)
    _assert_input_error(res)
    assert ("model.layers.0.self_attn.q_norm.weight" in res.stderr
            or "model.layers.0.self_attn.k_norm.weight" in res.stderr), res.describe()
    assert not out.exists()


def test_qwen3_q_norm_with_llama_config_is_named(cli):
    """With q_norm the only Qwen3 tensor left, the message must name q_norm.weight."""
    _, _, W = cli.random_weights(QWEN3, seed=1, layer=0)
    del W["model.layers.0.self_attn.k_norm.weight"]
    res, out = _forward_res(cli, LLAMA_SAME_SHAPES, W)
    _assert_input_error(res, "model.layers.0.self_attn.q_norm.weight")
    assert not out.exists()


@pytest.mark.parametrize("cfg,tensor", [(QWEN3, "q_norm.weight"), (QWEN3, "k_norm.weight"),
                                        (QWEN3_MOE, "q_norm.weight"), (OLMO2, "k_norm.weight")],
                         ids=["qwen3-q_norm", "qwen3-k_norm", "qwen3-moe-q_norm",
                              "olmo2-k_norm"])
def test_missing_norm_is_named(cli, cfg, tensor):
    _, _, W = cli.random_weights(cfg, seed=2, layer=1)
    name = ref.layer_prefix(1) + tensor
    del W[name]
    res, _ = _forward_res(cli, cfg, W, layer=1)
    _assert_input_error(res, name)


@pytest.mark.parametrize("cfg,tensor,shape", [
    (QWEN3, "k_norm.weight", (50,)),                 # d + 2
    (QWEN3, "q_norm.weight", (192,)),                # the whole projection (OLMo 2's width)
    (QWEN3, "k_norm.weight", (2, 48)),               # 2-D
    (OLMO2, "q_norm.weight", (32,)),                 # per-head width (Qwen3's)
    (OLMO2, "k_norm.weight", (128,)),                # q's width where k's belongs (G < H)
], ids=["qwen3-k_norm-d+2", "qwen3-q_norm-full-width", "qwen3-k_norm-2d",
        "olmo2-q_norm-per-head", "olmo2-k_norm-q-width"])
def test_misshapen_norm_is_named(cli, cfg, tensor, shape):
    _, _, W = cli.random_weights(cfg, seed=3, layer=0)
    name = ref.layer_prefix(0) + tensor
    W[name] = torch.ones(shape)
    res, _ = _forward_res(cli, cfg, W)
    _assert_input_error(res, name)


def test_bias_given_to_bias_free_family_is_named(cli):
    """qwen2_moe never has an o_proj bias, mixtral no biases at all: an extra one is unused."""
    _, _, W = cli.random_weights(QWEN2_MOE, seed=4, layer=0)
    name = ref.layer_prefix(0) + "o_proj.bias"
    W[name] = torch.zeros(QWEN2_MOE["hidden_size"])
    res, _ = _forward_res(cli, QWEN2_MOE, W)
    _assert_input_error(res, name)
    _, _, W = cli.random_weights(MIXTRAL, seed=4, layer=0)
    name = ref.layer_prefix(0) + "q_proj.bias"
    W[name] = torch.zeros(MIXTRAL["num_attention_heads"] * 32)
    res, _ = _forward_res(cli, MIXTRAL, W)
    _assert_input_error(res, name)


LLAMA = {"model_type": "llama", "hidden_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "rope_theta": 10000.0}


def test_unexpected_tensor_is_named(cli):
    _, _, W = cli.random_weights(LLAMA, seed=5, layer=0)
    name = "model.layers.0.self_attn.foo.weight"
    W[name] = torch.ones(4, 4)
    res, out = _forward_res(cli, LLAMA, W)
    _assert_input_error(res, name)
    assert not out.exists()


def test_rotary_inv_freq_is_tolerated(cli):
    """Older HF checkpoints store self_attn.rotary_emb.inv_freq: not an error, and not used."""
    _, wpath, W = cli.random_weights(LLAMA, seed=6, layer=1)
    cpath = cli.write_config(LLAMA)
    x = make_hidden(2, 6, LLAMA["hidden_size"], 7)
    pos = make_positions(2, 6, [100, 0])
    inp = cli.write_input(x, pos)
    plain = cli.forward(cpath, wpath, inp, layer=1)
    W2 = dict(W)
    # Deliberately not the real inv_freq: it must be ignored, not read.
    W2["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.full((16,), 0.5)
    with_inv = save_tensors(cli.path("inv_freq", ".safetensors"), W2)
    got = cli.forward(cpath, with_inv, inp, layer=1)
    assert torch.equal(got, plain)
    assert_matches(got, ref.forward(LLAMA, W, x, pos, layer=1), "with rotary_emb.inv_freq")


def test_other_layers_tensors_are_not_this_layers_business(cli):
    """A file holding two layers: layer 1 runs; the extra-tensor check is per layer prefix (a
    stray tensor in layer 0 does not stop layer 1, but does stop layer 0)."""
    _, _, W0 = cli.random_weights(QWEN3, seed=8, layer=0)
    _, _, W1 = cli.random_weights(QWEN3, seed=9, layer=1)
    both = dict(W0, **W1)
    both["model.layers.0.self_attn.bar.weight"] = torch.ones(2)
    res, _ = _forward_res(cli, QWEN3, both, layer=1)
    assert res.returncode == 0, res.describe()
    res, _ = _forward_res(cli, QWEN3, both, layer=0)
    _assert_input_error(res, "model.layers.0.self_attn.bar.weight")


# ============================================================================ Falcon RefinedWeb


def _header_shapes(path):
    """Tensor shapes from a safetensors header, without reading the data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


# The original tiiuae/falcon-40b config.json (remote code, before new_decoder_architecture).
FALCON_40B_RW = {"alibi": False, "apply_residual_connection_post_layernorm": False,
                 "architectures": ["RWForCausalLM"], "attention_dropout": 0.0,
                 "bias": False, "bos_token_id": 11, "eos_token_id": 11,
                 "hidden_dropout": 0.0, "hidden_size": 8192, "initializer_range": 0.02,
                 "layer_norm_epsilon": 1e-05, "model_type": "RefinedWeb", "n_head": 128,
                 "n_head_kv": 8, "n_layer": 60, "parallel_attn": True, "torch_dtype": "bfloat16",
                 "use_cache": True, "vocab_size": 65024}


def test_refinedweb_40b_random_weights_have_the_real_shapes(cli):
    """RW's Attention allocates query_key_value with (2·n_head_kv + n_head)·head_dim rows:
    (16 + 128)·64 = 9216 for Falcon-40B; dense is [8192, 8192]."""
    cpath = cli.write_config(FALCON_40B_RW)
    wpath = cli.path("f40b", ".safetensors")
    cli.run_ok("random-weights", "--config", cpath, "--output", wpath, "--seed", 1,
               "--layer", 59, "--dtype", "bf16")
    p = "transformer.h.59.self_attention."
    assert _header_shapes(wpath) == {p + "query_key_value.weight": ("BF16", (9216, 8192)),
                                     p + "dense.weight": ("BF16", (8192, 8192))}


def _falcon_split_grouped(fused, H, G, d):
    """RW _split_heads for RefinedWeb: view [..., G, H/G + 2, d]; q = [:, :-2], k = [-2],
    v = [-1]."""
    rest = fused.shape[1:]
    v = fused.reshape(G, H // G + 2, d, *rest)
    return (v[:, :-2].reshape(H * d, *rest), v[:, -2].reshape(G * d, *rest),
            v[:, -1].reshape(G * d, *rest))


@pytest.mark.parametrize("model_type,n_head_kv", [("RefinedWeb", 2), ("RefinedWeb", 1),
                                                  ("RefinedWebModel", None)],
                         ids=["refinedweb-gqa", "refinedweb-kv1", "refinedwebmodel-mqa"])
def test_refinedweb_forward_matches_oracle(cli, model_type, n_head_kv):
    """A scaled-down RW config: RefinedWeb reads n_head_kv as G with the grouped layout;
    RefinedWebModel (Falcon-7B) stays multi-query, [H + 2, d] (the G = 1 grouped layout)."""
    cfg = {"model_type": model_type, "hidden_size": 256, "n_head": 8, "n_layer": 2,
           "bias": False, "parallel_attn": True, "alibi": False}
    if n_head_kv is not None:
        cfg["n_head_kv"] = n_head_kv
    else:
        cfg["multi_query"] = True
    H, D = 8, 256
    d = D // H
    G = n_head_kv or 1
    cpath, wpath, W = cli.random_weights(cfg, seed=12, layer=1)
    p = "transformer.h.1.self_attention."
    assert {k: tuple(v.shape) for k, v in W.items()} == {
        p + "query_key_value.weight": ((H + 2 * G) * d, D), p + "dense.weight": (D, H * d)}
    wq, wk, wv = _falcon_split_grouped(W[p + "query_key_value.weight"], H, G, d)
    q = ref.layer_prefix(1)
    llama = {"model_type": "llama", "hidden_size": D, "num_attention_heads": H,
             "num_key_value_heads": G, "num_hidden_layers": 2, "rope_theta": 10000.0}
    x = make_hidden(2, 9, D, 13)
    pos = make_positions(2, 9, [400, 0])
    got = cli.forward(cpath, wpath, cli.write_input(x, pos), layer=1, prefill=4)
    want = ref.forward(llama, {q + "q_proj.weight": wq, q + "k_proj.weight": wk,
                               q + "v_proj.weight": wv, q + "o_proj.weight": W[p + "dense.weight"]},
                       x, pos, layer=1)
    assert_matches(got, want, f"{model_type} n_head_kv={n_head_kv}")


# ============================================================================ real configs


@pytest.mark.parametrize("name", ["qwen3-8b", "qwen3-30b-a3b"])
def test_real_config_layer_shapes_and_forward(cli, name):
    """Published configs (configs/qwen3-8b.json, configs/qwen3-30b-a3b.json): one layer of real
    size in bf16 has the shapes transformers builds (Qwen3-30B-A3B: head_dim 128 with hidden/heads
    = 64), and 3 tokens (at most 8 rows: bf16 weights widened exactly) match the oracle."""
    cfg = json.loads((REPO / "configs" / f"{name}.json").read_text())
    layer = 5
    cpath, wpath, W = cli.random_weights(cfg, seed=17, layer=layer, dtype="bf16")
    assert {k: tuple(v.shape) for k, v in W.items()} == ref.expected_weight_shapes(cfg, layer)
    assert all(v.dtype == torch.bfloat16 for v in W.values())
    got, want, _, _ = run_case(cli, cfg, B=1, S=3, seed=17, starts=30000, layer=layer,
                               weights=(wpath, W))
    assert_matches(got, want, name)
