# SPDX-License-Identifier: Apache-2.0
"""attn CLI against the independent torch oracle (torch_reference.py).

Every case writes an HF-style config.json, asks `attn random-weights` for a checkpoint layer,
loads it with the official safetensors package, builds the oracle from those tensors, writes
`hidden_states` (F32 [B,S,D]) and optionally `position_ids` (I64 [B,S]) and `attention_mask`
(I64 or F32 [B,S]), runs `attn forward` and compares `attn_output` (F32 [B,S,D]).

Metric (one helper, `assert_matches`):   max|attn - ref|  <=  1e-4 * max|ref|
where ref is the float64 oracle rounded to float32.

Configs are scaled-down versions of real ones (hidden 128-256) so each test takes well under a
second or two.
"""

from __future__ import annotations

import copy

import pytest
import torch

import torch_reference as ref
from conftest import save_tensors

REL_TOL = 1e-4
MLA_FORMS = ("naive", "absorbed", "auto")


# ============================================================================ configs

LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 512, "vocab_size": 1000, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
    "torch_dtype": "bfloat16", "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64, "rope_type": "llama3"},
}

# MQA (G = 1), explicit head_dim != D/H, attention_bias (q, k, v and o biases), linear scaling.
LLAMA_MQA_BIAS = {
    "model_type": "llama", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 48, "num_hidden_layers": 2,
    "max_position_embeddings": 4096, "rope_theta": 10000.0, "attention_bias": True,
    "rope_scaling": {"type": "linear", "factor": 2.0},
}

# Plain MHA llama (G = H), no biases, default RoPE.
LLAMA_MHA = {
    "model_type": "llama", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 4, "num_hidden_layers": 1, "max_position_embeddings": 2048,
    "rope_theta": 10000.0, "attention_bias": False,
}

QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 192,
    "intermediate_size": 512, "vocab_size": 1000, "num_attention_heads": 6,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "sliding_window": 131072,
    "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False,
    "rope_scaling": None,
}

QWEN2_SLIDING = {
    "model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 4, "max_position_embeddings": 4096,
    "rope_theta": 10000.0, "use_sliding_window": True, "sliding_window": 4,
    "max_window_layers": 2,
}

# Qwen-style yarn: no mscale keys -> attention factor 0.1 ln(4) + 1 on cos and sin.
QWEN2_YARN = {
    "model_type": "qwen2", "hidden_size": 256, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 8192,
    "rope_theta": 10000.0, "use_sliding_window": False,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
}

# Yarn with an explicit attention_factor (wins over mscale) and non-default betas.
LLAMA_YARN_AF = {
    "model_type": "llama", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                     "attention_factor": 1.3, "beta_fast": 16, "beta_slow": 2},
}

# Partial rotary: RoPE on the first half of each head (rotate-half within those dims).
LLAMA_PARTIAL = {
    "model_type": "llama", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 2048,
    "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
}

MISTRAL = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 256,
    "intermediate_size": 512, "vocab_size": 1000, "num_attention_heads": 8,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 32768,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "sliding_window": 5,
}

DSV3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 64,
    "vocab_size": 1000, "num_attention_heads": 4, "num_key_value_heads": 4,
    "num_hidden_layers": 2, "n_routed_experts": 8, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1, "q_lora_rank": 96,
    "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32,
    "rope_theta": 10000, "max_position_embeddings": 1280, "rms_norm_eps": 1e-6,
    "attention_bias": False, "torch_dtype": "bfloat16",
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 32,
                     "type": "yarn"},
}

V2LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "hidden_size": 192, "num_attention_heads": 4, "num_key_value_heads": 4,
    "num_hidden_layers": 2, "q_lora_rank": None, "kv_lora_rank": 48,
    "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 24, "rope_theta": 10000,
    "max_position_embeddings": 1280, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 32,
                     "type": "yarn"},
}

DSV3_ROTATE_HALF = dict(copy.deepcopy(DSV3), rope_interleave=False)

# mscale != mscale_all_dim: cos/sin carry mscale(s,1.0)/mscale(s,0.707) and the softmax scale
# mscale(s,0.707)^2 -- catches "mscale used where mscale_all_dim belongs".
DSV3_MSCALE_DIFFERS = copy.deepcopy(DSV3)
DSV3_MSCALE_DIFFERS["rope_scaling"].update(mscale=1.0, mscale_all_dim=0.707)

ALL_CONFIGS = {
    "llama31": LLAMA31, "llama-mqa-bias": LLAMA_MQA_BIAS, "llama-mha": LLAMA_MHA,
    "qwen2": QWEN2, "qwen2-sliding": QWEN2_SLIDING, "qwen2-yarn": QWEN2_YARN,
    "llama-yarn-af": LLAMA_YARN_AF, "llama-partial": LLAMA_PARTIAL, "mistral": MISTRAL,
    "dsv3": DSV3, "v2lite": V2LITE, "dsv3-rotate-half": DSV3_ROTATE_HALF,
}


# ============================================================================ helpers


def assert_matches(got: torch.Tensor, want: torch.Tensor, what: str = "") -> float:
    """max|attn - ref| <= 1e-4 * max|ref|. Returns the relative error."""
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != " \
                                                  f"{tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: attn output has non-finite values"
    g, w = got.double(), want.double()
    err = (g - w).abs().max().item()
    scale = w.abs().max().item()
    assert scale > 0, f"{what}: reference is all zeros (useless case)"
    rel = err / scale
    worst = _unravel(int((g - w).abs().argmax()), g.shape)
    print(f"[{what}] max|attn-ref|/max|ref| = {rel:.2e}")  # shown with pytest -s
    assert err <= REL_TOL * scale, (
        f"{what}: max|attn-ref| = {err:.3e} > {REL_TOL:g}*max|ref| = {REL_TOL * scale:.3e} "
        f"(relative {rel:.2e}); worst at index {worst}")
    return rel


def _unravel(idx, shape):
    out = []
    for n in reversed(shape):
        out.append(idx % n)
        idx //= n
    return tuple(reversed(out))


def make_positions(B: int, S: int, starts):
    if starts is None:
        return None
    if isinstance(starts, int):
        starts = [starts] * B
    return torch.stack([torch.arange(S, dtype=torch.int64) + s for s in starts])


def make_hidden(B, S, D, seed):
    torch.manual_seed(seed)
    return torch.randn(B, S, D, dtype=torch.float32)


def left_pad_mask(B, S, pads, dtype=torch.int64):
    m = torch.ones(B, S, dtype=dtype)
    for b, n in enumerate(pads):
        m[b, :n] = 0
    return m


def hf_positions_from_mask(mask):
    """HF generate(): position_ids = cumsum(mask) - 1, padded slots set to 1."""
    m = (mask != 0).to(torch.int64)
    pos = m.cumsum(-1) - 1
    return pos.masked_fill(m == 0, 1)


def no_visible_key_rows(spec, layer, mask, S):
    B = mask.shape[0]
    vis = ref.visible_mask(B, S, mask, spec.window_for_layer(layer))
    return ~vis.any(-1)  # [B, S]


def run_case(cli, cfg, *, B, S, seed, starts=None, mask=None, layer=None, mla=None,
             prefill=None, weights=None):
    """Returns (attn output, oracle output, weights dict, paths dict)."""
    if weights is None:
        cpath, wpath, W = cli.random_weights(cfg, seed=seed, layer=layer)
    else:
        wpath, W = weights
        cpath = cli.write_config(cfg)
    x = make_hidden(B, S, cfg["hidden_size"], seed + 1000)
    pos = make_positions(B, S, starts)
    inp = cli.write_input(x, pos, mask)
    got = cli.forward(cpath, wpath, inp, layer=layer, mla=mla, prefill=prefill)
    want = ref.forward(cfg, W, x, pos, mask, layer=layer or 0,
                       mla_form="absorbed" if mla == "absorbed" else "naive")
    return got, want, W, {"config": cpath, "weights": wpath, "input": inp, "x": x, "pos": pos}


# ============================================================================ random-weights


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_random_weights_names_and_shapes(cli, name):
    cfg = ALL_CONFIGS[name]
    layer = 1 if cfg.get("num_hidden_layers", 1) > 1 else None
    _, _, W = cli.random_weights(cfg, seed=7, layer=layer)
    want = ref.expected_weight_shapes(cfg, layer or 0)
    prefix = ref.layer_prefix(layer or 0)
    have = {k: tuple(v.shape) for k, v in W.items() if k.startswith(prefix)}
    assert have == want
    for k in want:
        assert W[k].is_floating_point(), (k, W[k].dtype)
        assert torch.isfinite(W[k].double()).all(), k
        assert W[k].double().abs().max() > 0, k


def test_random_weights_deterministic_by_seed(cli):
    _, _, a = cli.random_weights(QWEN2, seed=3)
    _, _, b = cli.random_weights(QWEN2, seed=3)
    _, _, c = cli.random_weights(QWEN2, seed=4)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ============================================================================ forward vs oracle

GQA_CASES = [
    # id, config, kwargs for run_case
    ("llama31-llama3-far-positions", LLAMA31, dict(B=2, S=12, starts=[5000, 5123])),
    ("llama-mqa-headdim48-bias-linear", LLAMA_MQA_BIAS, dict(B=2, S=10, starts=[17, 0])),
    ("llama-mha-default-positions", LLAMA_MHA, dict(B=1, S=11, starts=None)),
    ("qwen2-bias", QWEN2, dict(B=2, S=10, starts=None)),
    ("qwen2-bias-positions", QWEN2, dict(B=2, S=10, starts=[0, 40000])),
    ("mistral-window5-S16", MISTRAL, dict(B=1, S=16, starts=None)),
    ("mistral-window5-batch", MISTRAL, dict(B=2, S=16, starts=[3, 900])),
    ("qwen2-layer1-full-attention", QWEN2_SLIDING, dict(B=1, S=12, layer=1)),
    ("qwen2-layer3-sliding-window4", QWEN2_SLIDING, dict(B=1, S=12, layer=3)),
    ("qwen2-yarn-no-mscale-far", QWEN2_YARN, dict(B=2, S=10, starts=[3000, 7000])),
    ("llama-yarn-explicit-attention-factor", LLAMA_YARN_AF, dict(B=1, S=9, starts=600)),
    ("llama-partial-rotary-0.5", LLAMA_PARTIAL, dict(B=1, S=9, starts=100)),
]


@pytest.mark.parametrize("cfg,kw", [(c, k) for _, c, k in GQA_CASES],
                         ids=[i for i, _, _ in GQA_CASES])
def test_gqa_forward(cli, cfg, kw):
    got, want, _, _ = run_case(cli, cfg, seed=11, **kw)
    assert_matches(got, want, "gqa forward")


MLA_CASES = [
    ("dsv3-qlora-yarn40-far", DSV3, dict(B=2, S=9, starts=[1000, 37])),
    ("dsv3-default-positions", DSV3, dict(B=1, S=7, starts=None)),
    ("v2lite-noqlora-mscale0.707-far", V2LITE, dict(B=2, S=9, starts=[1000, 2500])),
    ("dsv3-rope-interleave-false", DSV3_ROTATE_HALF, dict(B=1, S=9, starts=400)),
    ("dsv3-mscale1-mscale_all_dim0.707", DSV3_MSCALE_DIFFERS, dict(B=2, S=9, starts=[700, 0])),
]


@pytest.mark.parametrize("form", MLA_FORMS)
@pytest.mark.parametrize("cfg,kw", [(c, k) for _, c, k in MLA_CASES],
                         ids=[i for i, _, _ in MLA_CASES])
def test_mla_forward(cli, cfg, kw, form):
    got, want, _, _ = run_case(cli, cfg, seed=21, mla=form, **kw)
    assert_matches(got, want, f"mla --mla {form}")


def test_mla_layer_index(cli):
    got, want, _, _ = run_case(cli, DSV3, B=1, S=6, seed=5, starts=50, layer=1, mla="naive")
    assert_matches(got, want, "mla --layer 1")


@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_mla_latent_norm_eps_ignores_rms_norm_eps(cli, form):
    """DeepSeek's modeling code and transformers build q_a_layernorm / kv_a_layernorm with eps
    1e-6 whatever config.rms_norm_eps says. With down-projections scaled by 1e-3 the latents'
    mean square is ~1e-7, where 1e-5 and 1e-6 give outputs tens of percent apart; attn must match
    the 1e-6 oracle on a config that says 1e-5."""
    cfg = dict(copy.deepcopy(DSV3), rms_norm_eps=1e-5)
    _, _, W = cli.random_weights(cfg, seed=29)
    prefix = ref.layer_prefix(0)
    for name in ("q_a_proj.weight", "kv_a_proj_with_mqa.weight"):
        W[prefix + name] = W[prefix + name] * 1e-3
    wpath = save_tensors(cli.dir / "small_latents.safetensors", W)
    got, want, _, _ = run_case(cli, cfg, B=1, S=5, seed=29, starts=10, mla=form,
                               weights=(wpath, W))
    assert_matches(got, want, f"latent norm eps, --mla {form}")
    # The check has teeth: the same weights normalised with 1e-5 give a different answer.
    wrong = ref.parse_config(cfg)
    wrong.rms_norm_eps = 1e-5
    x = make_hidden(1, 5, cfg["hidden_size"], 29 + 1000)
    pos = make_positions(1, 5, 10)
    other = ref.forward(wrong, W, x, pos, None, layer=0,
                        mla_form="absorbed" if form == "absorbed" else "naive")
    assert (other - want).abs().max() > 1e-2 * want.abs().max()


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
@pytest.mark.parametrize("cfg,mla", [(QWEN2, None), (DSV3, "absorbed"), (DSV3, "naive")],
                         ids=["qwen2", "dsv3-absorbed", "dsv3-naive"])
def test_half_precision_weights(cli, cfg, mla, dtype, torch_dtype):
    """bf16/f16 checkpoints: the oracle reads the same stored values (upcast exactly). f16
    weights are always widened to fp32, so any call meets the fp32 tolerance; bf16 weights are
    widened exactly for up to 8 rows per projection (B·S = 8 here), while larger calls run a bf16
    GEMM on bf16-rounded activations (docs/semantics.md §9), which test_weight_formats.py holds
    to the same-precision PyTorch rule instead."""
    cpath, wpath, W = cli.random_weights(cfg, seed=13, dtype=dtype)
    assert all(v.dtype == torch_dtype for v in W.values()), {k: v.dtype for k, v in W.items()}
    S = 7 if dtype == "f16" else 4
    got, want, _, _ = run_case(cli, cfg, B=2, S=S, seed=13, starts=[300, 0], mla=mla,
                               weights=(wpath, W))
    assert_matches(got, want, f"{dtype} weights")


def test_position_ids_int32_accepted(cli):
    cpath, wpath, W = cli.random_weights(LLAMA31, seed=17)
    x = make_hidden(2, 6, LLAMA31["hidden_size"], 17)
    pos = make_positions(2, 6, [5000, 12])
    got = cli.forward(cpath, wpath, cli.write_input(x, pos.to(torch.int32)))
    assert_matches(got, ref.forward(LLAMA31, W, x, pos), "I32 position_ids")


# ============================================================================ rope_parameters


@pytest.mark.parametrize("cfg,starts,mla", [
    (LLAMA31, [5000, 6000], None),
    (QWEN2_YARN, [3000, 10], None),
    (DSV3, [1000, 2000], "naive"),
], ids=["llama3", "qwen2-yarn", "dsv3-yarn"])
def test_rope_parameters_spelling(cli, cfg, starts, mla):
    """transformers>=5 `rope_parameters` (rope_type, rope_theta inside) == `rope_scaling`."""
    newer = {k: v for k, v in copy.deepcopy(cfg).items() if k not in ("rope_scaling",
                                                                        "rope_theta")}
    rp = dict(cfg["rope_scaling"])
    if "type" in rp:
        rp["rope_type"] = rp.pop("type")
    rp["rope_theta"] = cfg["rope_theta"]
    newer["rope_parameters"] = rp
    cpath, wpath, W = cli.random_weights(cfg, seed=31)
    old, want, _, _ = run_case(cli, cfg, B=2, S=8, seed=31, starts=starts, mla=mla,
                               weights=(wpath, W))
    new, want_new, _, _ = run_case(cli, newer, B=2, S=8, seed=31, starts=starts, mla=mla,
                                   weights=(wpath, W))
    assert torch.equal(want, want_new)  # the oracle reads both spellings the same way
    assert_matches(old, want, "rope_scaling spelling")
    assert_matches(new, want, "rope_parameters spelling")
    assert_matches(new, old, "rope_parameters vs rope_scaling")


# ============================================================================ masks


MASK_MODELS = [
    ("llama31", LLAMA31, None),
    ("llama-mqa-bias", LLAMA_MQA_BIAS, None),
    ("qwen2", QWEN2, None),
    ("dsv3-naive", DSV3, "naive"),
    ("dsv3-absorbed", DSV3, "absorbed"),
    ("dsv3-auto", DSV3, "auto"),
]


def _zero_row_value(cfg, W, layer=0):
    spec = ref.parse_config(cfg)
    if spec.kind == "gqa" and spec.o_bias:
        return W[ref.layer_prefix(layer) + "o_proj.bias"].float()
    return torch.zeros(cfg["hidden_size"])


def _assert_zero_rows(got, rows, value, what):
    """Rows whose query sees no key: attention output exactly 0, so the layer gives o_proj(0)."""
    n = int(rows.sum())
    if n == 0:
        return
    sel = got[rows]  # [n, D]
    if value.abs().max() == 0:
        assert torch.equal(sel, torch.zeros_like(sel)), (
            f"{what}: {n} fully masked rows are not exactly zero; max|row| = "
            f"{sel.abs().max().item():.3e}")
    else:
        err = (sel.double() - value.double()).abs().max().item()
        assert err <= 1e-6 * value.abs().max().item(), (
            f"{what}: fully masked rows differ from o_proj bias by {err:.3e}")


@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.float32], ids=["I64", "F32"])
@pytest.mark.parametrize("cfg,mla", [(c, m) for _, c, m in MASK_MODELS],
                         ids=[i for i, _, _ in MASK_MODELS])
def test_left_padding_mask(cli, cfg, mla, mask_dtype):
    B, S = 3, 10
    mask = left_pad_mask(B, S, [0, 3, 6], dtype=mask_dtype)
    pos = hf_positions_from_mask(mask)
    cpath, wpath, W = cli.random_weights(cfg, seed=41)
    x = make_hidden(B, S, cfg["hidden_size"], 42)
    inp = cli.write_input(x, pos, mask)
    got = cli.forward(cpath, wpath, inp, mla=mla)
    want = ref.forward(cfg, W, x, pos, mask, mla_form="absorbed" if mla == "absorbed"
                       else "naive")
    assert_matches(got, want, "left padding")
    rows = no_visible_key_rows(ref.parse_config(cfg), 0, mask, S)
    assert int(rows.sum()) == 9
    _assert_zero_rows(got, rows, _zero_row_value(cfg, W), "left padding")
    # The unpadded sequence must not be affected by its neighbours' padding.
    alone = cli.write_input(x[:1].contiguous(), pos[:1].contiguous())
    got_alone = cli.forward(cpath, wpath, alone, mla=mla)
    assert_matches(got[:1], got_alone, "batch row 0 vs alone")


def test_batch_rows_independent_positions(cli):
    """Per-sequence position ids: each row equals running that sequence alone."""
    cfg = LLAMA31
    B, S = 3, 8
    cpath, wpath, W = cli.random_weights(cfg, seed=51)
    x = make_hidden(B, S, cfg["hidden_size"], 52)
    pos = make_positions(B, S, [0, 70, 5000])
    got = cli.forward(cpath, wpath, cli.write_input(x, pos))
    assert_matches(got, ref.forward(cfg, W, x, pos), "batch positions")
    for b in range(B):
        one = cli.forward(cpath, wpath, cli.write_input(x[b:b + 1].contiguous(),
                                                        pos[b:b + 1].contiguous()))
        assert_matches(got[b:b + 1], one, f"row {b} alone")


@pytest.mark.parametrize("cfg,mla", [
    (LLAMA_MQA_BIAS, None), (LLAMA31, None), (DSV3, "naive"), (DSV3, "absorbed"),
    (DSV3, "auto"), (V2LITE, "absorbed"),
], ids=["llama-o-bias", "llama-no-bias", "dsv3-naive", "dsv3-absorbed", "dsv3-auto",
        "v2lite-absorbed"])
def test_fully_padded_rows(cli, cfg, mla):
    """A query with no visible key -> zero attention row -> output o_proj(0) (= o bias)."""
    B, S = 3, 8
    mask = torch.ones(B, S, dtype=torch.int64)
    mask[0, :3] = 0          # left padding
    mask[1, :] = 0           # the whole sequence is padding
    mask[2, [0, 2, 5]] = 0   # holes: only slot 0 sees nothing
    cpath, wpath, W = cli.random_weights(cfg, seed=61)
    x = make_hidden(B, S, cfg["hidden_size"], 62)
    pos = make_positions(B, S, [10, 20, 30])
    got = cli.forward(cpath, wpath, cli.write_input(x, pos, mask), mla=mla)
    want = ref.forward(cfg, W, x, pos, mask,
                       mla_form="absorbed" if mla == "absorbed" else "naive")
    assert torch.isfinite(got).all(), "NaN/Inf in output of fully masked rows"
    rows = no_visible_key_rows(ref.parse_config(cfg), 0, mask, S)
    assert rows.tolist() == [[True] * 3 + [False] * 5, [True] * 8, [True] + [False] * 7]
    value = _zero_row_value(cfg, W)
    _assert_zero_rows(got, rows, value, "fully padded")
    assert_matches(got, want, "fully padded batch")


def test_sliding_window_row_with_all_keys_padded(cli):
    """Mistral W=3: query slot 6 only sees keys 4,5,6, all padded -> zero row."""
    cfg = dict(MISTRAL, sliding_window=3)
    B, S = 1, 10
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 1, 1, 1]], dtype=torch.int64)
    cpath, wpath, W = cli.random_weights(cfg, seed=71)
    x = make_hidden(B, S, cfg["hidden_size"], 72)
    got = cli.forward(cpath, wpath, cli.write_input(x, None, mask))
    want = ref.forward(cfg, W, x, None, mask)
    rows = no_visible_key_rows(ref.parse_config(cfg), 0, mask, S)
    assert rows[0].nonzero().flatten().tolist() == [6]
    _assert_zero_rows(got, rows, torch.zeros(cfg["hidden_size"]), "window+padding")
    assert_matches(got, want, "window+padding")


# ============================================================================ prefill


PREFILL_CASES = [
    ("llama31-far", LLAMA31, None, dict(starts=[5000, 77])),
    ("qwen2-bias", QWEN2, None, dict(starts=None)),
    ("llama-mqa-bias", LLAMA_MQA_BIAS, None, dict(starts=[3, 9])),
    ("dsv3-naive", DSV3, "naive", dict(starts=[1000, 5])),
    ("dsv3-absorbed", DSV3, "absorbed", dict(starts=[1000, 5])),
    ("dsv3-auto", DSV3, "auto", dict(starts=[1000, 5])),
    ("v2lite-naive", V2LITE, "naive", dict(starts=[200, 0])),
    ("v2lite-absorbed", V2LITE, "absorbed", dict(starts=[200, 0])),
    ("v2lite-auto", V2LITE, "auto", dict(starts=[200, 0])),
]


@pytest.mark.parametrize("cfg,mla,kw", [(c, m, k) for _, c, m, k in PREFILL_CASES],
                         ids=[i for i, _, _, _ in PREFILL_CASES])
def test_prefill_equals_full_forward(cli, cfg, mla, kw):
    B, S, N = 2, 12, 5
    cpath, wpath, W = cli.random_weights(cfg, seed=81)
    full, want, _, paths = run_case(cli, cfg, B=B, S=S, seed=81, mla=mla, weights=(wpath, W),
                                    **kw)
    pre = cli.forward(cpath, wpath, paths["input"], mla=mla, prefill=N)
    assert_matches(full, want, "full forward")
    assert_matches(pre, want, f"--prefill {N}")
    assert_matches(pre, full, f"--prefill {N} vs full")


def test_prefill_with_sliding_window(cli):
    cpath, wpath, W = cli.random_weights(MISTRAL, seed=91)
    full, want, _, paths = run_case(cli, MISTRAL, B=1, S=16, seed=91, weights=(wpath, W))
    for n in (1, 7, 15):
        pre = cli.forward(cpath, wpath, paths["input"], prefill=n)
        assert_matches(pre, want, f"mistral W=5 --prefill {n}")


def test_prefill_with_padding_mask(cli):
    cfg = LLAMA31
    B, S = 2, 12
    mask = left_pad_mask(B, S, [0, 4])
    pos = hf_positions_from_mask(mask)
    cpath, wpath, W = cli.random_weights(cfg, seed=95)
    x = make_hidden(B, S, cfg["hidden_size"], 96)
    inp = cli.write_input(x, pos, mask)
    want = ref.forward(cfg, W, x, pos, mask)
    assert_matches(cli.forward(cpath, wpath, inp), want, "full with mask")
    assert_matches(cli.forward(cpath, wpath, inp, prefill=5), want, "--prefill 5 with mask")


# ============================================================================ torch MHA


def test_mha_against_torch_multihead_attention(cli):
    """G = H, no biases, position ids all 0 (RoPE is the identity) == nn.MultiheadAttention."""
    cfg = LLAMA_MHA
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    B, S = 2, 9
    cpath, wpath, W = cli.random_weights(cfg, seed=101)
    p = ref.layer_prefix(0)
    x = make_hidden(B, S, D, 102)
    pos = torch.zeros(B, S, dtype=torch.int64)
    got = cli.forward(cpath, wpath, cli.write_input(x, pos))
    mha = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([W[p + "q_proj.weight"], W[p + "k_proj.weight"],
                                            W[p + "v_proj.weight"]]).double())
        mha.out_proj.weight.copy_(W[p + "o_proj.weight"].double())
        causal = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)
        want, _ = mha(x.double(), x.double(), x.double(), attn_mask=causal, need_weights=False)
    assert_matches(got, want.float(), "vs torch.nn.MultiheadAttention")


# ============================================================================ pairing trap


@pytest.mark.parametrize("cfg,mla,starts", [
    (DSV3, "naive", [1000, 3]),
    (DSV3, "absorbed", [1000, 3]),
    (DSV3_ROTATE_HALF, "naive", [400, 3]),
    (LLAMA31, None, [5000, 3]),
    (QWEN2, None, [0, 50]),
], ids=["dsv3-interleaved-naive", "dsv3-interleaved-absorbed", "dsv3-rotate-half",
        "llama-rotate-half", "qwen2-rotate-half"])
def test_pairing_trap(cli, cfg, mla, starts):
    """The wrong RoPE pairing is finite and plausible but far outside the tolerance."""
    got, want, W, paths = run_case(cli, cfg, B=2, S=10, seed=111, mla=mla, starts=starts)
    assert_matches(got, want, "right pairing")
    spec = ref.parse_config(cfg)
    wrong = ref.forward(cfg, W, paths["x"], paths["pos"], None,
                        mla_form="absorbed" if mla == "absorbed" else "naive",
                        interleaved=not spec.rope.interleaved)
    assert torch.isfinite(wrong).all()
    err = (got.double() - wrong.double()).abs().max().item()
    bound = REL_TOL * want.double().abs().max().item()
    assert err > 100 * bound, (
        f"the wrong pairing is within {err / bound:.1f}x the tolerance: the test cannot tell")


# ============================================================================ CLI errors


def _valid_case(cli, cfg, seed=121, B=1, S=4):
    cpath, wpath, W = cli.random_weights(cfg, seed=seed)
    x = make_hidden(B, S, cfg["hidden_size"], seed)
    return cpath, wpath, W, cli.write_input(x)


def _assert_input_error(res, *needles):
    assert res.returncode == 2, "expected exit code 2\n" + res.describe()
    assert res.stderr.strip(), "no message on stderr\n" + res.describe()
    for n in needles:
        assert n in res.stderr, f"stderr does not name {n!r}\n" + res.describe()


def test_error_missing_config_file(cli):
    cpath, wpath, _, inp = _valid_case(cli, LLAMA_MHA)
    missing = cli.dir / "no_such_config.json"
    res = cli.run(*cli.forward_args(missing, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, "no_such_config.json")
    res = cli.run("random-weights", "--config", missing, "--output", cli.dir / "w.safetensors",
                  "--seed", 1)
    _assert_input_error(res, "no_such_config.json")


def test_error_missing_weights_file(cli):
    cpath, wpath, _, inp = _valid_case(cli, LLAMA_MHA)
    res = cli.run(*cli.forward_args(cpath, cli.dir / "nope.safetensors", inp,
                                    cli.dir / "o.safetensors"))
    _assert_input_error(res, "nope.safetensors")


@pytest.mark.parametrize("cfg,tensor", [
    (LLAMA31, "k_proj.weight"),
    (QWEN2, "q_proj.bias"),
    (LLAMA_MQA_BIAS, "o_proj.bias"),
    (DSV3, "kv_b_proj.weight"),
    (DSV3, "q_a_layernorm.weight"),
    (V2LITE, "q_proj.weight"),
], ids=["llama-k_proj", "qwen2-q_bias", "llama-o_bias", "dsv3-kv_b", "dsv3-q_a_norm",
        "v2lite-q_proj"])
def test_error_weights_missing_tensor(cli, cfg, tensor):
    cpath, wpath, W, inp = _valid_case(cli, cfg)
    name = ref.layer_prefix(0) + tensor
    assert name in W
    del W[name]
    bad = save_tensors(cli.dir / "bad_weights.safetensors", W)
    res = cli.run(*cli.forward_args(cpath, bad, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, name)


@pytest.mark.parametrize("cfg,tensor", [
    (LLAMA31, "k_proj.weight"), (DSV3, "kv_a_proj_with_mqa.weight")], ids=["llama", "dsv3"])
def test_error_weights_wrong_shape(cli, cfg, tensor):
    cpath, wpath, W, inp = _valid_case(cli, cfg)
    name = ref.layer_prefix(0) + tensor
    W[name] = W[name][:-2].contiguous()
    bad = save_tensors(cli.dir / "bad_weights.safetensors", W)
    res = cli.run(*cli.forward_args(cpath, bad, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, name)


@pytest.mark.parametrize("cfg", [LLAMA31, DSV3], ids=["llama", "dsv3"])
def test_error_hidden_states_wrong_last_dim(cli, cfg):
    cpath, wpath, _, _ = _valid_case(cli, cfg)
    x = make_hidden(1, 4, cfg["hidden_size"] + 1, 0)
    inp = cli.write_input(x)
    res = cli.run(*cli.forward_args(cpath, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, "hidden_states")


def test_error_unknown_model_type(cli):
    cpath, wpath, _, inp = _valid_case(cli, LLAMA_MHA)
    bad = cli.write_config(dict(LLAMA_MHA, model_type="gpt2"))
    res = cli.run(*cli.forward_args(bad, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res)
    assert "gpt2" in res.stderr or "model_type" in res.stderr, res.describe()
    res = cli.run("random-weights", "--config", bad, "--output", cli.dir / "w.safetensors",
                  "--seed", 1)
    _assert_input_error(res)


@pytest.mark.parametrize("shape", [(1, 5), (2, 4), (4,)], ids=["S+1", "B+1", "1-D"])
def test_error_attention_mask_wrong_shape(cli, shape):
    cpath, wpath, _, _ = _valid_case(cli, LLAMA_MHA)
    x = make_hidden(1, 4, LLAMA_MHA["hidden_size"], 0)
    inp = cli.write_input(x, None, torch.ones(*shape, dtype=torch.int64))
    res = cli.run(*cli.forward_args(cpath, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, "attention_mask")


def test_error_position_ids_wrong_shape(cli):
    cpath, wpath, _, _ = _valid_case(cli, LLAMA_MHA)
    x = make_hidden(1, 4, LLAMA_MHA["hidden_size"], 0)
    inp = cli.write_input(x, torch.arange(5, dtype=torch.int64)[None])
    res = cli.run(*cli.forward_args(cpath, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, "position_ids")


@pytest.mark.parametrize("n", [0, 5])
def test_error_prefill_out_of_range(cli, n):
    cpath, wpath, _, inp = _valid_case(cli, LLAMA_MHA, S=4)
    res = cli.run(*cli.forward_args(cpath, wpath, inp, cli.dir / "o.safetensors", prefill=n))
    _assert_input_error(res, "prefill")


def test_error_input_missing_hidden_states(cli):
    cpath, wpath, _, _ = _valid_case(cli, LLAMA_MHA)
    inp = save_tensors(cli.dir / "in.safetensors",
                       {"position_ids": torch.zeros(1, 4, dtype=torch.int64)})
    res = cli.run(*cli.forward_args(cpath, wpath, inp, cli.dir / "o.safetensors"))
    _assert_input_error(res, "hidden_states")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_error_non_finite_hidden_states(cli, bad):
    cpath, wpath, _, _ = _valid_case(cli, LLAMA_MHA)
    x = make_hidden(1, 4, LLAMA_MHA["hidden_size"], 0)
    x[0, 2, 5] = bad
    inp = cli.write_input(x)
    out = cli.dir / "o.safetensors"
    res = cli.run(*cli.forward_args(cpath, wpath, inp, out))
    _assert_input_error(res, "hidden_states", "non-finite")
    assert not out.exists(), "no output file may be written on error"


def test_error_truncated_input_file(cli):
    """A corrupt safetensors input (truncated) is an error naming the file, not a crash."""
    cpath, wpath, _, inp = _valid_case(cli, LLAMA_MHA)
    data = inp.read_bytes()
    truncated = cli.dir / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 7])
    res = cli.run(*cli.forward_args(cpath, wpath, truncated, cli.dir / "o.safetensors"))
    _assert_input_error(res, "truncated.safetensors")
