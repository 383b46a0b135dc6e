# SPDX-License-Identifier: Apache-2.0
"""Independent PyTorch oracle for attn's attention layers.

Written from the formulas in docs/semantics.md (§1-§5), NOT
from attn's C++ sources, so that a disagreement between the two points at a real bug on one
side. The families added later (qwen3, qwen3_moe, olmo2, granite, mixtral, qwen2_moe; see
`_parse_gqa_family`) were written from Hugging Face transformers' own modeling and
configuration code, whose file and rule each branch cites; so was gpt_oss (OpenAI GPT-OSS,
`_parse_gpt_oss`: attention sinks, alternating sliding-window layers, YaRN by default), and so
were gemma2 and gemma3_text (`_parse_gemma`: logit soft-capping, query_pre_attn_scalar, Gemma's
(1 + w) q/k norms, local layers with their own RoPE), and glm and glm4 (`_parse_glm`: interleaved
RoPE on the first head_dim·partial_rotary_factor features, q/k/v biases, no o bias), phi3
(`_parse_phi3`: stacked qkv_proj, partial rotate-half RoPE, longrope, a window on every layer),
the rope types dynamic and longrope (`_parse_rope`, modeling_rope_utils); minicpm3
(`_parse_minicpm3`: DeepSeek-V2's MLA with MiniCPM3's own v_head_dim, pairing and longrope) was
written from MiniCPM3's remote modeling code; falcon (`_parse_falcon`: the fused query_key_value
layouts, ALiBi with BLOOM's slopes, bf16-rounded as build_alibi_tensor rounds them) and
llama4_text (`_parse_llama4`: NoPE layers with temperature tuning, chunked attention and a
weightless L2 q/k norm on RoPE layers, interleaved RoPE) were written from transformers'
modeling_falcon.py, modeling_llama4.py, their configuration files and masking_utils.py.
Everything is computed on the CPU in float64; `forward` returns float32.
`forward(..., compute_dtype=torch.bfloat16)` (or float16, float32) runs the same formulas at a
lower precision instead (see `Precision`), the baseline for tolerances of narrow-dtype weights.

Public surface:
  parse_config(cfg_dict)            -> Spec (all values that change attention math)
  expected_weight_shapes(spec, layer) -> {tensor name: shape} a checkpoint layer must hold
  inv_freq(spec, seq_len=None), attention_factor(spec), softmax_scale(spec),
  yarn_correction_range(...), varies_per_call(spec), prefill_calls(S, n)
  rope_cos_sin(spec, position_ids, calls=None), apply_rope(x, cos, sin, rotary_dim, interleaved)
  rope_for_layer(spec, layer)       -> the spec whose .rope rotates that layer (gemma3_text)
  visible_mask(B, S, attention_mask, window, chunk=0, chunk_from_first_token=False)
                                    -> bool [B, S, T]; layer_visible_mask(spec, layer, B, S, mask)
  layer_prefix(layer, cfg_or_spec=None), falcon_split(spec, fused)
  alibi_slopes(H), alibi_bias(spec, B, S, mask), temperature_scales(spec, S), left_padding(...)
  forward(cfg_or_spec, weights, hidden_states, position_ids=None, attention_mask=None,
          layer=0, mla_form="naive", interleaved=None, compute_dtype=float64,
          out_dtype=float32, calls=None) -> [B, S, D]
  Precision(dtype)                  the rounding applied after every op at compute_dtype

Conventions (reference page):
  * linear layers y = x W^T (+ b), W stored [out, in];
  * GQA query head h reads kv head h // (H // G);
  * causal and sliding-window masks act on the slot index in the sequence (0..S-1), not on the
    position id; key t is visible to the query in slot p iff t <= p and (no window or
    p - W < t); a key padding mask [B, S] (1 keep, 0 pad) hides keys only;
  * a query row that sees no key produces exactly zero attention output (attn's documented
    behaviour), so the layer output for that row is o_proj(0) = o bias (or 0);
  * attention sinks (gpt_oss): one learned logit per query head joins each row's softmax and is
    dropped after it, p_t = exp(s_t) / (exp(sink_h) + sum_u exp(s_u)) over the visible keys u.
    (HF's eager GPT-OSS attention gives exactly zero for a row with no visible key too: the sink
    takes all the probability.)
  * logit soft-capping (gemma2): each scaled score s becomes c·tanh(s / c) before the mask.
  * per-layer RoPE (gemma3_text): layers marked sliding rotate with `Spec.sliding_rope`, the
    others with `Spec.rope` (`rope_for_layer`).
  * partial interleaved RoPE (glm, glm4): the first r = int(head_dim·partial_rotary_factor)
    features rotate in pairs (x[2i], x[2i+1]) with θ_i = base^(-2i/r); the rest pass through. An
    odd r rotates r + 1 features, still with θ_i = base^(-2i/r) (`RopeSpec.freq_dim`).
  * RoPE chosen per call (rope types "dynamic" and "longrope", see `_parse_rope`, and
    minicpm3's longrope, `_parse_minicpm3`): the frequencies of a call depend on the largest
    position P of the call (over every token of the whole batch, padded slots included, as
    transformers' max(position_ids) + 1). `forward(..., calls=[n0, n1, ...])` splits the S slots
    into consecutive calls (a prefill of n0 tokens, then one decode step per slot:
    `prefill_calls`); each call's queries and new keys rotate with that call's frequencies and
    keys cached by earlier calls keep the rotation they got (transformers' KV cache stores
    rotated keys). calls=None is one call of all S slots.
    Dynamic NTK is modelled statelessly: transformers keeps the largest n seen since the last
    call shorter than L (dynamic_rope_update), which agrees with this rule on every call sequence
    whose largest positions do not decrease (prefill, then decode steps).
  * phi3 (`_parse_phi3`): q, k and v are row blocks of one stacked qkv_proj weight.
  * falcon (`_parse_falcon`): q, k and v come from one fused query_key_value by Falcon's views
    (`falcon_split`); tensors under transformer.h.N.self_attention. (`layer_prefix(N, spec)`).
    ALiBi adds slope_h·pos(t) to the unscaled q·k (`attend`'s logit_bias), pos(t) the key's
    index among its row's non-padding slots; `Spec.alibi_bf16` (default, transformers) rounds
    the slopes and the products to bfloat16.
  * llama4_text (`_parse_llama4`): per layer RoPE or NoPE (`Spec.uses_rope`), chunks
    (`Spec.chunk_for_layer`: key t visible to query p iff additionally t // C == p // C, counted
    from each row's first non-padding slot by default as transformers does, or from slot 0 with
    `Spec.chunk_from_first_token` False), the L2 norm after RoPE, and on NoPE layers the query
    times `temperature_scales` of its cache slot (padding counted), never of its position id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

GQA_MODEL_TYPES = ("llama", "mistral", "qwen2")
# Families read from transformers' modeling code (see _parse_gqa_family, _parse_gpt_oss); all are
# the GQA layer of §1, some with q/k norms (QK_NORM_*), a softmax scale from the config or
# attention sinks (gpt_oss).
GQA_FAMILY_TYPES = ("qwen3", "qwen3_moe", "olmo2", "granite", "mixtral", "qwen2_moe", "gpt_oss")
# Gemma 2 and 3 (text), read from transformers' gemma2/ and gemma3/ code (see _parse_gemma).
GEMMA_MODEL_TYPES = ("gemma2", "gemma3_text")
# GLM and GLM-4, read from transformers' glm/ and glm4/ code (see _parse_glm).
GLM_MODEL_TYPES = ("glm", "glm4")
QK_NORM_PER_HEAD = "per_head"  # Qwen3: RMSNorm of each head's d-vector, weights [d]
QK_NORM_FULL = "full"          # OLMo 2: RMSNorm of the whole projection, weights [H·d] / [G·d]
# Gemma 3: each head's d-vector, weights [d], scaling by (1 + w) (Gemma3RMSNorm)
QK_NORM_PER_HEAD_GEMMA = "per_head_gemma"
MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "minicpm3")
# GptOssConfig.__post_init__ (gpt_oss/configuration_gpt_oss.py): the rope parameters when the config
# gives none (rope_theta: GptOssConfig.default_theta = 150000).
GPT_OSS_DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                        "truncate": False, "original_max_position_embeddings": 4096}

_F64 = torch.float64


class Precision:
    """The precision one run of the oracle computes at.

    float64 (the oracle proper) and float32 run natively. For bfloat16 and float16 every
    tensor the formulas produce (each projection, norm, RoPE output, score, probability and
    attention output) is held at that dtype, i.e. rounded to it once per op, while each op
    itself computes in float32 -- as PyTorch's bf16/f16 matmuls accumulate in fp32 and HF's
    eager softmax runs in fp32 before `.to(query.dtype)`. (torch 1.13's CPU has no float16
    matmul, softmax or rsqrt at all, so the ops run on float32 copies and round after.)
    Calling the object rounds a tensor to the compute dtype and returns it in the working
    dtype (float64 or float32)."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        assert dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16), dtype
        self.dtype = dtype
        self.work = _F64 if dtype == _F64 else torch.float32

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.dtype == _F64:
            return t  # the oracle proper: callers hand it float64 already; nothing rounds
        if self.dtype == self.work:
            return t.to(self.work)
        return t.to(self.dtype).to(self.work)


EXACT = Precision(torch.float64)


# --------------------------------------------------------------------------------------------
# Config parsing
# --------------------------------------------------------------------------------------------


@dataclass
class RopeSpec:
    theta: float = 10000.0
    rotary_dim: int = 0  # r
    interleaved: bool = False
    type: str = "default"  # default | linear | llama3 | yarn
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None
    truncate: bool = True
    # The d of θ_i = base^(-2i/d) where it is not rotary_dim: GLM with an odd
    # d = int(head_dim·partial_rotary_factor) rotates d + 1 features (0 = rotary_dim).
    freq_dim: int = 0
    # longrope: the per-frequency divisors (r/2 each), short while the call's sequence fits in
    # L = original_max_position_embeddings, long beyond it; attention_factor holds the resolved
    # multiplier on cos and sin. longrope_min_len: a length the call's sequence is taken to be at
    # least (minicpm3: its cos/sin table spans max_position_embeddings from the start; 0 = none).
    short_factor: Optional[Tuple[float, ...]] = None
    long_factor: Optional[Tuple[float, ...]] = None
    longrope_min_len: int = 0


@dataclass
class Spec:
    model_type: str
    kind: str  # "gqa" | "mla"
    hidden_size: int
    num_heads: int
    num_layers: int
    rope: RopeSpec
    # GQA
    num_kv_heads: int = 0
    head_dim: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int = 0  # 0 = none
    sliding_layers: Optional[list] = None  # None = all layers use sliding_window
    # MLA
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rms_norm_eps: float = 1e-6
    # GQA families with q/k norms and explicit scales (GQA_FAMILY_TYPES)
    qk_norm: str = ""  # "" (none) | QK_NORM_PER_HEAD | QK_NORM_FULL
    qk_norm_eps: float = 1e-6
    scale_override: Optional[float] = None  # Granite's attention_multiplier; Gemma's
    #                                         query_pre_attn_scalar^-0.5
    attn_sinks: bool = False  # gpt_oss: self_attn.sinks [H], one extra softmax logit per head
    softcap: Optional[float] = None  # gemma2: attn_logit_softcapping c, score <- c·tanh(score / c)
    sliding_rope: Optional[RopeSpec] = None  # gemma3_text: the RoPE of the sliding layers
    stacked_qkv: bool = False  # phi3: q, k, v are row blocks of self_attn.qkv_proj.weight
    # falcon (`_parse_falcon`): the fused query_key_value layout, "" for every other family:
    # "mha" views its rows as [H, 3, d], "multi_query" as [H + 2, d], "grouped"
    # (new_decoder_architecture) as [G, H/G + 2, d]; weights under transformer.h.N.self_attention.
    falcon_layout: str = ""
    # ALiBi (falcon alibi: true): slope_h·pos(t) added to the unscaled q·k of head h, pos(t) the
    # key's index among the row's non-padding slots; no RoPE. alibi_bf16: transformers'
    # build_alibi_tensor rounds the slopes and then slope·pos to bfloat16 (False: exact).
    alibi: bool = False
    alibi_bf16: bool = True
    # llama4_text (`_parse_llama4`): nope_layers[i] True = layer i has no RoPE (and no L2 norm,
    # and the temperature when temperature_tuning); chunked_layers[i] True = layer i attends
    # within chunks of chunk_size slots; l2_qk_norm: the weightless norm of q and k on RoPE
    # layers. chunk_from_first_token: transformers' chunks start at each row's first
    # non-padding slot (masking_utils.chunked_overlay with left_padding, torch >= 2.6); False:
    # chunks of cache slots counted from slot 0, padding included (attn; transformers' legacy
    # rule).
    nope_layers: Optional[list] = None
    chunked_layers: Optional[list] = None
    chunk_size: int = 0
    l2_qk_norm: bool = False
    temperature_tuning: bool = False
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    chunk_from_first_token: bool = True

    def window_for_layer(self, layer: int) -> int:
        if self.kind != "gqa" or not self.sliding_window:
            return 0
        if self.sliding_layers is None:
            return self.sliding_window
        return self.sliding_window if self.sliding_layers[layer] else 0

    def uses_rope(self, layer: int) -> bool:
        """Whether the layer rotates q and k (not an ALiBi falcon, not a Llama 4 NoPE layer)."""
        if self.alibi:
            return False
        return not (self.nope_layers is not None and self.nope_layers[layer])

    def chunk_for_layer(self, layer: int) -> int:
        """The chunk size C of a chunked layer (llama4_text), 0 for every other layer."""
        if self.chunked_layers is None or not self.chunked_layers[layer]:
            return 0
        return self.chunk_size

    def is_sliding_layer(self, layer: int) -> bool:
        """The layer's type is "sliding_attention" (whatever its window value)."""
        if self.kind != "gqa":
            return False
        if self.sliding_layers is None:
            return bool(self.sliding_window)
        return bool(self.sliding_layers[layer])


def _rope_dict(cfg: Mapping) -> Tuple[dict, bool]:
    """Returns (scaling parameters dict or {}, came_from_rope_parameters)."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and rp:
        return dict(rp), True
    rs = cfg.get("rope_scaling")
    if isinstance(rs, dict) and rs:
        return dict(rs), False
    return {}, False


def _factor_list(params: Mapping, key: str, n: int) -> Tuple[float, ...]:
    """longrope's short_factor / long_factor: a list of n numbers (Phi3Config.validate_rope and
    transformers' _validate_longrope_rope_parameters: a list of numbers of length dim // 2)."""
    v = params.get(key)
    if not isinstance(v, list) or not all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        raise ValueError(f"rope scaling {key} must be a list of numbers, got {v!r}")
    if len(v) != n:
        raise ValueError(f"rope scaling {key} must have rotary_dim / 2 = {n} entries, "
                         f"got {len(v)}")
    return tuple(float(e) for e in v)


def _parse_rope(cfg: Mapping, width: int, interleaved: bool,
                default_theta: float = 10000.0,
                default_params: Optional[Mapping] = None,
                default_max_positions: Optional[int] = None,
                default_top_original: Optional[int] = None) -> RopeSpec:
    """default_params: the scaling parameters a config class supplies when the config gives
    neither rope_parameters nor rope_scaling (gpt_oss), else none (plain RoPE).
    default_max_positions: the config class's max_position_embeddings default, which dynamic
    and longrope read (None: the key is required for them). default_top_original: a config
    class's top-level original_max_position_embeddings default (Phi3Config: 4096; None: the
    attribute exists only when config.json gives it).

    dynamic (modeling_rope_utils._compute_dynamic_ntk_parameters, dynamic_rope_update):
      L = config.max_position_embeddings; for a call with seq_len = max(position_ids) + 1,
      n = max(seq_len, L), base' = base·(factor·n/L - (factor - 1))^(r/(r - 2)),
      θ_i = base'^(-2i/r); no attention factor. r = 2 divides by zero there: ValueError.
    longrope (_compute_longrope_parameters, longrope_frequency_update; RotaryEmbeddingConfigMixin
      .standardize_rope_params, read at v5):
      L = the top-level original_max_position_embeddings when the config has that attribute
      (standardize_rope_params gives it priority: "Phi3 ... save original_max_position_embeddings
      outside rope parameters"), else the rope dict's, else max_position_embeddings.
      θ_i = 1 / (ext_i·base^(2i/r)), ext = long_factor when seq_len > L, else short_factor.
      cos and sin times attention_factor if given, else with s = the dict's factor if given,
      else max_position_embeddings / L: 1 if s <= 1 else sqrt(1 + ln s / ln L).
      transformers v4 set s = max_position_embeddings / L whenever the top-level key exists,
      whatever the dict's factor: a config where the two differ (and no attention_factor) is
      read differently by v4 and v5 and is not modelled (ValueError)."""
    params, _ = _rope_dict(cfg)
    if not params and default_params:
        params = dict(default_params)
    theta = params.get("rope_theta", cfg.get("rope_theta", default_theta))
    prf = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if prf is None:
        prf = 1.0
    r = int(width * prf)
    rope = RopeSpec(theta=float(theta), rotary_dim=r, interleaved=interleaved)
    rtype = params.get("rope_type", params.get("type", "default")) if params else "default"
    if rtype is None:
        rtype = "default"
    rope.type = rtype
    if rtype == "default":
        return rope
    if rtype not in ("linear", "llama3", "yarn", "dynamic", "longrope"):
        raise ValueError(f"unsupported rope type {rtype!r}")
    if rtype in ("dynamic", "longrope"):
        max_pos = cfg.get("max_position_embeddings", default_max_positions)
        if max_pos is None:
            raise ValueError(f"{rtype} RoPE needs max_position_embeddings (not modelled without)")
        max_pos = int(max_pos)
    if rtype == "dynamic":
        if r <= 2:
            raise ValueError(f"dynamic RoPE with rotary_dim {r}: r/(r - 2) is undefined")
        rope.factor = float(params["factor"])
        rope.original_max_position_embeddings = max_pos
        return rope
    if rtype == "longrope":
        rope.short_factor = _factor_list(params, "short_factor", r // 2)
        rope.long_factor = _factor_list(params, "long_factor", r // 2)
        top = cfg.get("original_max_position_embeddings", default_top_original)
        if top is not None:
            L = int(top)
        else:
            L = int(params.get("original_max_position_embeddings") or max_pos)
        rope.original_max_position_embeddings = L
        af = params.get("attention_factor")
        s = params.get("factor")
        if af is None and s is not None and top is not None and float(s) != max_pos / L:
            raise ValueError("longrope factor differs from max_position_embeddings / "
                             "original_max_position_embeddings: transformers v4 and v5 disagree")
        s = max_pos / L if s is None else float(s)
        rope.factor = s
        if af is not None:
            rope.attention_factor = float(af)
        else:
            rope.attention_factor = 1.0 if s <= 1.0 else math.sqrt(1.0 + math.log(s) /
                                                                   math.log(L))
        return rope
    rope.factor = float(params["factor"])
    if rtype == "llama3":
        rope.low_freq_factor = float(params.get("low_freq_factor", 1.0))
        rope.high_freq_factor = float(params.get("high_freq_factor", 4.0))
        rope.original_max_position_embeddings = int(params["original_max_position_embeddings"])
    elif rtype == "yarn":
        rope.original_max_position_embeddings = int(
            params.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
        rope.beta_fast = float(params.get("beta_fast") or 32.0)
        rope.beta_slow = float(params.get("beta_slow") or 1.0)
        rope.mscale = params.get("mscale")
        rope.mscale_all_dim = params.get("mscale_all_dim")
        rope.attention_factor = params.get("attention_factor")
        rope.truncate = bool(params.get("truncate", True))
    return rope


def _given(cfg: Mapping, key: str, default):
    """cfg[key] unless absent or null."""
    v = cfg.get(key)
    return default if v is None else v


def _parse_gqa_family(cfg: Mapping, mt: str, D: int, H: int, L: int) -> Spec:
    """The GQA families of GQA_FAMILY_TYPES, each as transformers defines it (paths under
    src/transformers/models/ of huggingface/transformers):

    qwen3 (qwen3/modeling_qwen3.py Qwen3Attention, configuration_qwen3.py Qwen3Config):
      head_dim = config.head_dim, whose Qwen3Config default is 128 (not D/H); bias =
      attention_bias (default False) on q, k, v and o; q_norm / k_norm = Qwen3RMSNorm(head_dim,
      eps=rms_norm_eps (default 1e-6)) applied to q_proj(x).view(..., -1, head_dim), i.e. each
      head's vector, before RoPE; sliding_window = config.sliding_window on layers whose
      layer_types entry is "sliding_attention". __post_init__: sliding_window = sliding_window if
      use_sliding_window else None (default 4096); layer_types default: "sliding_attention" iff
      sliding_window is not None and i >= max_window_layers (default 28).
    qwen3_moe (qwen3_moe/modeling_qwen3_moe.py Qwen3MoeAttention, configuration_qwen3_moe.py):
      as qwen3 except head_dim = getattr(config, "head_dim", D/H) (Qwen3MoeConfig has no
      head_dim field, so D/H unless config.json gives one) and the window: Qwen3MoeConfig has
      neither layer_types nor max_window_layers; self.sliding_window = config.sliding_window
      (None unless use_sliding_window) on every layer.
    olmo2 (olmo2/modular_olmo2.py Olmo2Attention, configuration_olmo2.py): LlamaAttention
      (head_dim = D/H unless given, bias = attention_bias on q, k, v and o) with
      q_norm = Olmo2RMSNorm(H·head_dim), k_norm = Olmo2RMSNorm(G·head_dim), eps rms_norm_eps
      (default 1e-5), applied to the whole q_proj / k_proj output before the head split and
      RoPE; no window.
    granite (granite/modular_granite.py GraniteAttention, configuration_granite.py):
      LlamaAttention with self.scaling = config.attention_multiplier (GraniteConfig default
      1.0, not head_dim^-0.5). residual_multiplier / embedding_multiplier / logits_scaling act
      outside the attention layer.
    mixtral (mixtral/modular_mixtral.py MixtralAttention = MistralAttention,
      configuration_mixtral.py): no biases; head_dim = D/H unless given; sliding_window on every
      layer, MixtralConfig default None (no window); rope_theta default 1e6 (default_theta).
    qwen2_moe (qwen2_moe/modular_qwen2_moe.py Qwen2MoeAttention, configuration_qwen2_moe.py):
      LlamaAttention with q/k/v bias = qkv_bias (default True) and no o bias; head_dim = D/H
      unless given; window config.sliding_window on layers whose layer_types entry is
      "sliding_attention". __post_init__: sliding_window = sliding_window if use_sliding_window
      else 0 (default 4096); layer_types default: "sliding_attention" iff (i + 1) % 2 and
      i < max_window_layers (default 28) and use_sliding_window.

    Not modelled: a layer_types entry "sliding_attention" while use_sliding_window is false. HF
    then has no window value (qwen3: None, which create_sliding_window_causal_mask refuses;
    qwen2_moe: 0, a window that hides every key); this oracle uses full attention there."""
    G = int(_given(cfg, "num_key_value_heads", H))
    d_default = 128 if mt == "qwen3" else D // H
    d = int(_given(cfg, "head_dim", d_default))
    rope = _parse_rope(cfg, d, interleaved=False,
                       default_theta=1000000.0 if mt == "mixtral" else 10000.0)
    spec = Spec(model_type=mt, kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, num_kv_heads=G, head_dim=d)
    if mt in ("qwen3", "qwen3_moe", "olmo2", "granite"):
        ab = bool(_given(cfg, "attention_bias", False))
        spec.qkv_bias = ab
        spec.o_bias = ab
    elif mt == "qwen2_moe":
        spec.qkv_bias = bool(_given(cfg, "qkv_bias", True))
        spec.o_bias = False
    if mt in ("qwen3", "qwen3_moe"):
        spec.qk_norm = QK_NORM_PER_HEAD
        spec.qk_norm_eps = float(_given(cfg, "rms_norm_eps", 1e-6))
    elif mt == "olmo2":
        spec.qk_norm = QK_NORM_FULL
        spec.qk_norm_eps = float(_given(cfg, "rms_norm_eps", 1e-5))
    if mt == "granite":
        spec.scale_override = float(_given(cfg, "attention_multiplier", 1.0))
    use_sw = bool(_given(cfg, "use_sliding_window", False))
    layer_types = cfg.get("layer_types")
    if mt == "mixtral":
        spec.sliding_window = int(_given(cfg, "sliding_window", 0))
    elif mt == "qwen3_moe":
        if use_sw:
            spec.sliding_window = int(_given(cfg, "sliding_window", 0) if "sliding_window" in cfg
                                      else 4096)
    elif mt in ("qwen3", "qwen2_moe") and use_sw:
        spec.sliding_window = int(_given(cfg, "sliding_window", 0) if "sliding_window" in cfg
                                  else 4096)
        if layer_types is not None:
            spec.sliding_layers = [t == "sliding_attention" for t in layer_types]
        elif mt == "qwen3":
            if spec.sliding_window:  # HF: sliding_window is not None
                mwl = int(_given(cfg, "max_window_layers", 28))
                spec.sliding_layers = [i >= mwl for i in range(L)]
        else:
            mwl = int(_given(cfg, "max_window_layers", 28))
            spec.sliding_layers = [bool((i + 1) % 2) and i < mwl for i in range(L)]
    return spec


def _parse_gpt_oss(cfg: Mapping, D: int, H: int) -> Spec:
    """gpt_oss, as transformers defines it (src/transformers/models/gpt_oss/ of
    huggingface/transformers):

    configuration_gpt_oss.py GptOssConfig: field defaults head_dim 64, num_key_value_heads 8,
      num_hidden_layers 36, sliding_window 128, attention_bias True, rope_parameters None,
      layer_types None, default_theta 150000. __post_init__: num_key_value_heads None -> H;
      head_dim None -> D // H; layer_types None -> "sliding_attention" if (i + 1) % 2 else
      "full_attention" (even layers slide); rope_parameters None -> GPT_OSS_DEFAULT_ROPE (yarn,
      factor 32, beta_fast 32, beta_slow 1, truncate False, original 4096).
    modular_gpt_oss.py GptOssAttention(Qwen2Attention): head_dim = config.head_dim, scaling
      head_dim^-0.5; q/k/v/o Linear with bias = attention_bias; sliding_window =
      config.sliding_window on layers whose layer_types entry is "sliding_attention"
      (Qwen2Attention); sinks = Parameter [H]. _apply_rotary_emb: (first half, second half)
      of each head = the rotate-half pairing (x[i], x[i + d/2]); cos/sin = cos/sin(p·inv_freq)
      · attention_scaling (GptOssRotaryEmbedding, no cat of the two halves: the same numbers
      rotate-half uses).
      eager_attention_forward: logits = q·k^T·scaling + additive mask; cat the head's sink as one
      more column; subtract the row max; softmax; drop the sink column; probs @ v.
    YaRN per modeling_rope_utils._compute_yarn_parameters (see inv_freq / attention_factor here):
      truncate = rope_parameters.get("truncate", True); attention factor 0.1·ln(factor) + 1.

    Not modelled: sliding_window null on a "sliding_attention" layer (HF: no window value); this
    oracle uses full attention there."""
    G = cfg.get("num_key_value_heads", 8)
    G = H if G is None else int(G)
    d = cfg.get("head_dim", 64)
    d = D // H if d is None else int(d)
    L = int(_given(cfg, "num_hidden_layers", 36))
    rope = _parse_rope(cfg, d, interleaved=False, default_theta=150000.0,
                       default_params=GPT_OSS_DEFAULT_ROPE)
    ab = bool(_given(cfg, "attention_bias", True))
    spec = Spec(model_type="gpt_oss", kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, num_kv_heads=G, head_dim=d, qkv_bias=ab, o_bias=ab, attn_sinks=True)
    spec.sliding_window = int(_given(cfg, "sliding_window", 0) if "sliding_window" in cfg
                              else 128)
    layer_types = cfg.get("layer_types")
    if layer_types is None:
        layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    spec.sliding_layers = [t == "sliding_attention" for t in layer_types]
    return spec


def _parse_gemma(cfg: Mapping, mt: str, D: int, H: int) -> Spec:
    """gemma2 and gemma3_text, as transformers defines them (src/transformers/models/ of
    huggingface/transformers; read at v5.25.0, checked against v4.50.0 and the versions the code
    index stores):

    gemma2 (configuration_gemma2.py Gemma2Config, modeling_gemma2.py Gemma2Attention):
      field defaults num_hidden_layers 26, num_key_value_heads 4 (not H), head_dim 256 (not D/H),
      attention_bias False, query_pre_attn_scalar 256, sliding_window 4096,
      attn_logit_softcapping 50.0 (null: none), layer_types None, rope theta 10000
      (RotaryEmbeddingConfigMixin.default_theta; v4: rope_theta=10000.0).
      __post_init__: layer_types None -> "sliding_attention" if (i + 1) % 2 else
      "full_attention" (even layers slide; v4.4x: sliding_window if not layer_idx % 2).
      Gemma2Attention: scaling = query_pre_attn_scalar**-0.5; q/k/v/o Linear with bias =
      attention_bias; no q/k norms; sliding_window on "sliding_attention" layers;
      eager_attention_forward: scores = q·k^T·scaling, then if softcap is not None:
      scores / softcap, tanh, * softcap; THEN + the additive mask; softmax in fp32.
      Gemma2RotaryEmbedding: rotate-half over the whole head_dim, rope_parameters / rope_scaling
      as every family (ROPE_INIT_FUNCTIONS).
    gemma3_text (configuration_gemma3.py Gemma3TextConfig, modeling_gemma3.py Gemma3Attention,
      Gemma3RMSNorm, Gemma3RotaryEmbedding):
      field defaults as gemma2 except attn_logit_softcapping None, rope_theta 1e6 (global) and
      rope_local_base_freq 10000 (default_theta {"global": 1e6, "local": 1e4}), rms_norm_eps
      1e-6. __post_init__: layer_types None -> "sliding_attention" iff (i + 1) %
      sliding_window_pattern (default 6; v4.50 had the field sliding_window_pattern and no
      layer_types). convert_rope_params_to_dict: rope_parameters (v5: nested by layer type)
      default {"sliding_attention": {"rope_type": "default"}, "full_attention": {"rope_type":
      "default"}}; rope_scaling (the v4 spelling) updates "full_attention" only;
      "full_attention".rope_theta defaults to rope_theta (1e6), "sliding_attention".rope_theta
      to rope_local_base_freq (1e4). (v4.50: a second rotary embedding for local layers made
      from a config copy with rope_theta = rope_local_base_freq, rope_scaling default.)
      Gemma3Attention: q_norm / k_norm = Gemma3RMSNorm(head_dim, eps=rms_norm_eps) on
      q_proj(x).view(..., -1, head_dim), each head's vector, before RoPE:
      x·rsqrt(mean(x²) + eps)·(1 + w); scaling = query_pre_attn_scalar**-0.5; biases =
      attention_bias; the window on "sliding_attention" layers. The attention call passes no
      softcap (v4.50.0 through v5.25.0): attn_logit_softcapping is stored but NOT applied, so
      this oracle ignores it for gemma3_text (Spec.softcap None).

    Not modelled (ValueError or documented here):
      use_bidirectional_attention true (v5: non-causal attention, and for gemma3_text a window of
      sliding_window // 2 + 1 each side) -> ValueError;
      a flat (not per-layer-type) rope_parameters for gemma3_text (v5 ignores its keys and uses
      defaults) -> ValueError;
      null for a key whose HF type is not optional (num_key_value_heads, head_dim,
      query_pre_attn_scalar, attention_bias, rms_norm_eps: v5's strict dataclass refuses it, v4
      crashes) is read as absent; sliding_window null on a sliding layer (v5's
      create_sliding_window_causal_mask refuses it) is read as no window."""
    if _given(cfg, "use_bidirectional_attention", False):
        raise ValueError(f"{mt}: use_bidirectional_attention is not modelled by this oracle")
    G = int(_given(cfg, "num_key_value_heads", 4))
    d = int(_given(cfg, "head_dim", 256))
    L = int(_given(cfg, "num_hidden_layers", 26))
    ab = bool(_given(cfg, "attention_bias", False))
    if mt == "gemma2":
        rope = _parse_rope(cfg, d, interleaved=False, default_theta=10000.0)
        sliding_rope = None
    else:
        rp = cfg.get("rope_parameters")
        rp = dict(rp) if isinstance(rp, dict) and rp else {}
        if rp and not ({"full_attention", "sliding_attention"} & set(rp)):
            raise ValueError("gemma3_text: a flat rope_parameters is not modelled (transformers "
                             "v5 expects it nested by layer type)")
        full = dict(rp.get("full_attention") or {"rope_type": "default"})
        local = dict(rp.get("sliding_attention") or {"rope_type": "default"})
        rs = cfg.get("rope_scaling")
        if isinstance(rs, dict) and rs:
            full.update(rs)
        full.setdefault("rope_theta", _given(cfg, "rope_theta", 1000000.0))
        local.setdefault("rope_theta", _given(cfg, "rope_local_base_freq", 10000.0))
        rope = _parse_rope({"rope_parameters": full}, d, interleaved=False)
        sliding_rope = _parse_rope({"rope_parameters": local}, d, interleaved=False)
    spec = Spec(model_type=mt, kind="gqa", hidden_size=D, num_heads=H, num_layers=L, rope=rope,
                num_kv_heads=G, head_dim=d, qkv_bias=ab, o_bias=ab,
                scale_override=float(_given(cfg, "query_pre_attn_scalar", 256)) ** -0.5,
                sliding_rope=sliding_rope)
    if mt == "gemma2":
        cap = cfg.get("attn_logit_softcapping", 50.0)  # absent: 50; null: no capping
        spec.softcap = None if cap is None else float(cap)
    else:
        spec.qk_norm = QK_NORM_PER_HEAD_GEMMA
        spec.qk_norm_eps = float(_given(cfg, "rms_norm_eps", 1e-6))
    spec.sliding_window = int(_given(cfg, "sliding_window", 0) if "sliding_window" in cfg
                              else 4096)
    layer_types = cfg.get("layer_types")
    if layer_types is None:
        pattern = 2 if mt == "gemma2" else int(_given(cfg, "sliding_window_pattern", 6))
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                       for i in range(L)]
    spec.sliding_layers = [t == "sliding_attention" for t in layer_types]
    return spec


def _parse_glm(cfg: Mapping, mt: str, D: int, H: int) -> Spec:
    """glm and glm4, as transformers defines them (src/transformers/models/ of
    huggingface/transformers; read at v5.25.0, checked against v4.50.0 (glm) and v4.57.1 (glm,
    glm4)):

    configuration_glm.py GlmConfig / configuration_glm4.py Glm4Config (the same fields): field
      defaults num_key_value_heads 2 (not H), head_dim 128 (not D/H), attention_bias True,
      num_hidden_layers 40, max_position_embeddings 131072, rope theta 10000
      (RotaryEmbeddingConfigMixin.default_theta; v4: rope_theta=10000.0); partial_rotary_factor
      0.5 (v5 __post_init__: kwargs.setdefault("partial_rotary_factor", 0.5); v4: __init__
      argument). v5 convert_rope_params_to_dict: rope_parameters = rope_scaling or
      rope_parameters or {}; setdefault rope_theta (config.json's rope_theta, else 10000) and,
      when not None, partial_rotary_factor (config.json's, else 0.5): a value inside
      rope_parameters / rope_scaling wins over the top-level key.
    modular_glm.py / modeling_glm.py GlmAttention (LlamaAttention with o_proj bias=False;
      Glm4Attention in modeling_glm4.py is the same code): head_dim = getattr(config, "head_dim",
      D/H); scaling head_dim^-0.5; q/k/v Linear with bias = attention_bias, o_proj without;
      no window, no q/k norms.
    GlmRotaryEmbedding.compute_default_rope_parameters: dim = int(head_dim ·
      rope_parameters.get("partial_rotary_factor", 1.0)); inv_freq = 1 / base^(arange(0, dim, 2)
      / dim); forward: emb = cat(freqs, freqs). apply_rotary_pos_emb: cos = cos[..., :half]
      .repeat_interleave(2), rotary_dim = cos.shape[-1] (= dim, or dim + 1 for an odd dim), the
      first rotary_dim features rotate with GLM's rotate_half (stack(-x[1::2], x[0::2])
      .flatten(-2)): the interleaved pairing (x[2i], x[2i+1]) at θ_i; the rest pass through. Other
      rope types (linear, llama3, yarn) through ROPE_INIT_FUNCTIONS with the same dim.

    Null values: partial_rotary_factor null is full rotation (v5: setdefault keeps the null, which
      convert_rope_params_to_dict does not copy, so rope_parameters has none and the rotary reads
      1.0; v4 fails on int(head_dim * None)); rope_scaling / rope_parameters null: default RoPE;
      attention_bias null: no bias (v4: nn.Linear(bias=None); v5's strict dataclass refuses it).
    Not modelled (ValueError): head_dim or num_key_value_heads null (GlmAttention fails on
      None**-0.5 / H // None; Glm4Config refuses them), rope_theta null (base None), an odd dim
      with yarn (HF's ramp has dim // 2 entries against (dim + 1) // 2 frequencies) and a rotary
      width beyond head_dim."""
    for key in ("head_dim", "num_key_value_heads"):
        if key in cfg and cfg[key] is None:
            raise ValueError(f"{mt}: {key} null is not modelled (transformers fails on it)")
    if _rope_dict(cfg)[0].get("rope_theta", cfg.get("rope_theta", 10000.0)) is None:
        raise ValueError(f"{mt}: rope_theta null is not modelled (transformers fails on it)")
    G = int(cfg.get("num_key_value_heads", 2))
    d = int(cfg.get("head_dim", 128))
    L = int(_given(cfg, "num_hidden_layers", 40))
    rope_cfg = dict(cfg)
    rope_cfg.setdefault("partial_rotary_factor", 0.5)
    rope_cfg.setdefault("max_position_embeddings", 131072)
    rope = _parse_rope(rope_cfg, d, interleaved=True, default_theta=10000.0)
    if rope.rotary_dim % 2:
        if rope.type in ("yarn", "dynamic", "longrope"):
            raise ValueError(f"{mt}: an odd rotary width with {rope.type} is not modelled")
        rope.freq_dim = rope.rotary_dim
        rope.rotary_dim += 1
    if rope.rotary_dim > d:
        raise ValueError(f"{mt}: rotary width {rope.rotary_dim} > head_dim {d}")
    ab = bool(cfg.get("attention_bias", True))  # null: no bias (v4's nn.Linear(bias=None))
    return Spec(model_type=mt, kind="gqa", hidden_size=D, num_heads=H, num_layers=L, rope=rope,
                num_kv_heads=G, head_dim=d, qkv_bias=ab, o_bias=False)


def _parse_phi3(cfg: Mapping, D: int, H: int, L: int) -> Spec:
    """phi3, as transformers defines it (src/transformers/models/phi3/ of huggingface/transformers,
    read at v5: configuration_phi3.py Phi3Config, modeling_phi3.py Phi3Attention,
    apply_rotary_pos_emb):

    Phi3Config: field defaults num_key_value_heads None -> H, max_position_embeddings 4096,
      original_max_position_embeddings 4096 (so the attribute always exists and is longrope's L,
      whatever the rope dict says: standardize_rope_params), sliding_window None, rope theta
      10000, partial_rotary_factor 1.0; rope types "default" and "longrope" only ("su" and "yarn"
      are renamed "longrope"; anything else is a ValueError); short_factor / long_factor must be
      lists of int(hidden_size // H · partial_rotary_factor) // 2 numbers.
    Phi3Attention: head_dim = getattr(config, "head_dim", D // H); scaling head_dim^-0.5;
      qkv_proj = Linear(D, H·d + 2·G·d, bias=False): q = rows [0, H·d), k = the next G·d rows,
      v = the last G·d; o_proj without bias; sliding_window = config.sliding_window on every
      layer (one sliding causal mask for the model; key t visible to query p iff p - W < t <= p).
    apply_rotary_pos_emb: rotary_dim = cos.shape[-1] = int(head_dim·partial_rotary_factor); the
      first rotary_dim features rotate with rotate_half (pairs (x[i], x[i + r/2])), the rest
      pass through."""
    G = int(_given(cfg, "num_key_value_heads", H))
    d = int(_given(cfg, "head_dim", D // H))
    params, _ = _rope_dict(cfg)
    rtype = params.get("rope_type", params.get("type", "default")) if params else "default"
    if rtype in ("su", "yarn"):
        params = dict(params, rope_type="longrope")
        params.pop("type", None)
    elif rtype not in ("default", "longrope", None):
        raise ValueError(f"phi3: rope type {rtype!r} (Phi3Config accepts default and longrope)")
    rope_cfg = dict(cfg)
    if params:
        rope_cfg.pop("rope_parameters", None)
        rope_cfg["rope_scaling"] = params
    rope = _parse_rope(rope_cfg, d, interleaved=False, default_theta=10000.0,
                       default_max_positions=4096, default_top_original=4096)
    return Spec(model_type="phi3", kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, num_kv_heads=G, head_dim=d, stacked_qkv=True,
                sliding_window=int(_given(cfg, "sliding_window", 0)))


def _parse_minicpm3(cfg: Mapping, D: int, H: int, L: int) -> Spec:
    """minicpm3, as MiniCPM3's remote code defines it (openbmb/MiniCPM3-4B modeling_minicpm.py:
    MiniCPMAttention, MiniCPMLongRoPE, apply_rotary_pos_emb, MiniCPMRMSNorm):

    MiniCPMAttention: DeepSeek-V2's MLA layer with v_head_dim = hidden_size // num_attention_heads
      (a v_head_dim key is not read), always q_a_proj -> q_a_layernorm (MiniCPMRMSNorm, eps 1e-6)
      -> q_b_proj, kv_a_layernorm eps 1e-6, softmax_scale = (qk_nope_head_dim +
      qk_rope_head_dim)^-0.5 (no mscale), no biases (attention_bias default False).
    apply_rotary_pos_emb: rotate_half over the qk_rope_head_dim part, pairs (x[i], x[i + dr/2]);
      no de-interleaving permutation (DeepSeek-V2's code has one).
    MiniCPMLongRoPE (rope_scaling type "longrope"): L = rope_scaling
      ["original_max_position_embeddings"]; scaling_factor = sqrt(1 + ln(max_position_embeddings
      / L) / ln L), always (no floor at 1; a rope_scaling attention_factor is never read) on cos
      and sin; θ_i = base^(-2i/dr) / ext_i with ext = long_factor when the cos/sin table's length
      exceeds L, else short_factor. The table is built for max_position_embeddings at init and
      rebuilt (for the whole range) when a call's kv_seq_len exceeds it, so a call uses the long
      factors iff max(max_position_embeddings, its length) > L; the length is taken as P + 1 here,
      P the call's largest position (kv_seq_len for positions 0..n-1; MiniCPM3 itself indexes its
      table by position and fails on positions past it). rope_scaling null: plain RoPE. Its
      linear and dynamic variants scale a position table and are not modelled (ValueError)."""
    dr = int(cfg["qk_rope_head_dim"])
    rs = cfg.get("rope_scaling")
    rope = RopeSpec(theta=float(_given(cfg, "rope_theta", 10000.0)), rotary_dim=dr,
                    interleaved=False)
    if isinstance(rs, dict) and rs:
        rtype = rs.get("type", rs.get("rope_type"))
        if rtype != "longrope":
            raise ValueError(f"minicpm3: rope scaling {rtype!r} is not modelled")
        L_orig = int(rs["original_max_position_embeddings"])
        max_pos = int(cfg["max_position_embeddings"])
        rope.type = "longrope"
        rope.short_factor = _factor_list(rs, "short_factor", dr // 2)
        rope.long_factor = _factor_list(rs, "long_factor", dr // 2)
        rope.original_max_position_embeddings = L_orig
        rope.factor = max_pos / L_orig
        rope.attention_factor = math.sqrt(1.0 + math.log(max_pos / L_orig) / math.log(L_orig))
        rope.longrope_min_len = max_pos
    return Spec(model_type="minicpm3", kind="mla", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, q_lora_rank=int(cfg["q_lora_rank"]),
                kv_lora_rank=int(cfg["kv_lora_rank"]),
                qk_nope_head_dim=int(cfg["qk_nope_head_dim"]), qk_rope_head_dim=dr,
                v_head_dim=D // H, rms_norm_eps=1e-6)


def _parse_falcon(cfg: Mapping, D: int, H: int, L: int) -> Spec:
    """falcon, as transformers defines it (src/transformers/models/falcon/ of
    huggingface/transformers: configuration_falcon.py FalconConfig, modeling_falcon.py
    FalconAttention, build_alibi_tensor, FalconModel._update_causal_mask):

    FalconConfig: field defaults num_kv_heads None -> H, alibi False, new_decoder_architecture
      False, multi_query True, bias False, rope theta 10000, max_position_embeddings 2048.
    FalconAttention: head_dim = D // H; query_key_value = FalconLinear(D, rows, bias=bias) with
      rows (G·2 + H)·d (new_decoder_architecture, G = num_kv_heads), D + 2d (multi_query), 3D
      (neither); _split_heads views the fused output as [G, H/G + 2, d] (q = [:, :-2], k = [-2],
      v = [-1]), [H + 2, d] (q = [:H], k = [H], v = [H + 1]) or [H, 3, d] (q, k, v = [:, 0],
      [:, 1], [:, 2]); dense = FalconLinear(D, D, bias=bias). inv_norm_factor = d^-0.5.
      Without alibi: rotate-half RoPE on the whole head (FalconRotaryEmbedding).
    ALiBi (alibi true): no RoPE. build_alibi_tensor: n' = 2^floor(log2 H); slopes
      2^(-8(h+1)/n') for h < n', then 2^(-4(2j+1)/n') for j < min(n', H - n'); the bias of head
      h at key t is slope_h · pos(t), pos(t) = (cumsum(attention_mask) - 1)·attention_mask over
      the row's keys (t itself when no mask). The slopes are rounded to bfloat16 and the product
      is a bfloat16 tensor: bias = bf16(bf16(slope_h)·pos(t)) (alibi_bf16; the float32 model
      widens it afterwards). The SDPA path (the default) passes alibi / sqrt(d), masked with
      min_dtype, as attn_mask to scaled_dot_product_attention: q·k·d^-0.5 + bias·d^-0.5, i.e.
      (q·k + bias)·d^-0.5 as the eager path's attention_logits.
      (Not modelled: the eager path, attn_implementation="eager" or output_attentions=True, adds
      the bias twice in the version read (commit 00dcc6dd): once in attention_logits and once
      through the causal mask, which _update_causal_mask built from alibi / sqrt(d).)
    model_type RefinedWeb / RefinedWebModel (the original remote code) are not read here.

    Refused (ValueError): alibi not a JSON boolean (FalconConfig's strict dataclass refuses a
    string); rope_scaling with alibi (FalconConfig refuses it)."""
    alibi = cfg.get("alibi", False)
    if not isinstance(alibi, bool):
        raise ValueError(f"falcon: alibi must be true or false, got {alibi!r}")
    if D % H:
        raise ValueError(f"falcon: hidden_size {D} is not divisible by {H} heads")
    d = D // H
    if _given(cfg, "new_decoder_architecture", False):
        layout, G = "grouped", int(_given(cfg, "num_kv_heads", H))
    elif _given(cfg, "multi_query", True):
        layout, G = "multi_query", 1
    else:
        layout, G = "mha", H
    if H % G:
        raise ValueError(f"falcon: {H} heads are not a multiple of num_kv_heads {G}")
    if alibi:
        if _rope_dict(cfg)[0]:
            raise ValueError("falcon: rope_scaling is not supported when alibi is true")
        rope = RopeSpec(rotary_dim=0)
    else:
        rope = _parse_rope(cfg, d, interleaved=False, default_max_positions=2048)
    bias = bool(_given(cfg, "bias", False))
    return Spec(model_type="falcon", kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, num_kv_heads=G, head_dim=d, qkv_bias=bias, o_bias=bias,
                falcon_layout=layout, alibi=alibi)


LLAMA4_LAYER_TYPES = ("chunked_attention", "full_attention")


def _parse_llama4(cfg: Mapping, D: int, H: int) -> Spec:
    """llama4_text, as transformers defines it (src/transformers/models/llama4/ of
    huggingface/transformers, read at v5: configuration_llama4.py Llama4TextConfig,
    modeling_llama4.py Llama4TextAttention, Llama4TextL2Norm, Llama4TextRotaryEmbedding,
    apply_rotary_emb, eager_attention_forward; masking_utils.create_chunked_causal_mask):

    Llama4TextConfig: field defaults num_hidden_layers 48, num_key_value_heads 8 (None -> H),
      head_dim 128 (None -> D // H), rms_norm_eps 1e-5, rope theta 500000 (default_theta),
      max_position_embeddings 131072, use_qk_norm True, no_rope_layers None,
      no_rope_layer_interval 4, attention_chunk_size 8192, layer_types None,
      attn_temperature_tuning True, floor_scale 8192, attn_scale 0.1, attention_bias False.
      __post_init__: no_rope_layers = no_rope_layers if no_rope_layers (truthy) else
      [int((i + 1) % no_rope_layer_interval != 0)]; layer_types None -> "chunked_attention" if
      no_rope_layers[i] else "full_attention".
    Llama4TextAttention: use_rope = no_rope_layers[layer]; q/k/v/o Linear with bias =
      attention_bias; scaling head_dim^-0.5; RoPE layers: apply_rotary_emb (view_as_complex of
      neighbour pairs (x[2i], x[2i+1]) times e^{i·p·θ_i}: the interleaved pairing), θ from the
      rope dict (llama3 etc.) over head_dim; then, if use_qk_norm and use_rope, Llama4TextL2Norm
      (eps = rms_norm_eps) of every q and k head: x·rsqrt(mean(x²) + eps), no weight (the norm
      of a rotated vector equals the norm of the vector, so before or after RoPE is the same up
      to rounding); NoPE layers with attn_temperature_tuning (truthy): query ·
      (log1p(floor((cache_position + 1) / floor_scale))·attn_scale + 1), cache_position the
      token's slot in the cache (padding counted). Llama4TextDecoderLayer: the mask is the
      layer_types entry's: create_causal_mask (full) or create_chunked_causal_mask (key t visible
      to query p iff t <= p and (t - lp) // C == (p - lp) // C, C = attention_chunk_size, lp =
      the row's number of leading padding slots: chunked_overlay with left_padding, torch >= 2.6;
      transformers' legacy rule, t // C == p // C over cache slots, is chunk_from_first_token
      False). Keys with attention_mask 0 are hidden.

    Refused (ValueError): no_rope_layers whose length is not num_hidden_layers (transformers
      indexes it by layer: shorter fails, longer reads a prefix; neither is modelled) or with
      an entry other than 0 / 1; layer_types of the wrong length or with an entry other than
      "chunked_attention" / "full_attention"; attention_chunk_size null or < 1 with a chunked
      layer (create_chunked_causal_mask raises)."""
    L = int(_given(cfg, "num_hidden_layers", 48))
    G = int(_given(cfg, "num_key_value_heads", H) if "num_key_value_heads" in cfg else 8)
    d = int(_given(cfg, "head_dim", D // H) if "head_dim" in cfg else 128)
    rope = _parse_rope(cfg, d, interleaved=True, default_theta=500000.0,
                       default_max_positions=131072)
    nrl = cfg.get("no_rope_layers")
    if nrl:
        if not isinstance(nrl, list) or len(nrl) != L:
            raise ValueError(f"llama4_text: no_rope_layers must list num_hidden_layers = {L} "
                             f"entries, got {nrl!r}")
        if not all(isinstance(e, int) and e in (0, 1) for e in nrl):
            raise ValueError(f"llama4_text: no_rope_layers entries must be 0 or 1, got {nrl!r}")
        use_rope = [bool(e) for e in nrl]
    else:
        interval = int(_given(cfg, "no_rope_layer_interval", 4))
        use_rope = [(i + 1) % interval != 0 for i in range(L)]
    types = cfg.get("layer_types")
    if types is None:
        chunked = list(use_rope)
    else:
        if not isinstance(types, list) or len(types) != L:
            raise ValueError(f"llama4_text: layer_types must list num_hidden_layers = {L} "
                             f"entries, got {types!r}")
        bad = [t for t in types if t not in LLAMA4_LAYER_TYPES]
        if bad:
            raise ValueError(f"llama4_text: layer_types entry {bad[0]!r} (expected "
                             f"chunked_attention or full_attention)")
        chunked = [t == "chunked_attention" for t in types]
    C = cfg.get("attention_chunk_size", 8192)
    if any(chunked) and (C is None or int(C) < 1):
        raise ValueError(f"llama4_text: attention_chunk_size {C!r} with a chunked layer")
    ab = bool(_given(cfg, "attention_bias", False))
    return Spec(model_type="llama4_text", kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                rope=rope, num_kv_heads=G, head_dim=d, qkv_bias=ab, o_bias=ab,
                rms_norm_eps=float(_given(cfg, "rms_norm_eps", 1e-5)),
                nope_layers=[not r for r in use_rope], chunked_layers=chunked,
                chunk_size=int(C or 0), l2_qk_norm=bool(_given(cfg, "use_qk_norm", True)),
                temperature_tuning=bool(_given(cfg, "attn_temperature_tuning", True)),
                floor_scale=float(_given(cfg, "floor_scale", 8192)),
                attn_scale=float(_given(cfg, "attn_scale", 0.1)))


def parse_config(cfg: Mapping) -> Spec:
    """HF config.json dict -> Spec. Raises ValueError for an unknown model_type."""
    mt = cfg.get("model_type")
    D = int(cfg["hidden_size"])
    H = int(cfg["num_attention_heads"])
    L = int(cfg.get("num_hidden_layers", 1))
    if mt == "gpt_oss":
        return _parse_gpt_oss(cfg, D, H)
    if mt in GEMMA_MODEL_TYPES:
        return _parse_gemma(cfg, mt, D, H)
    if mt in GLM_MODEL_TYPES:
        return _parse_glm(cfg, mt, D, H)
    if mt == "phi3":
        return _parse_phi3(cfg, D, H, L)
    if mt == "minicpm3":
        return _parse_minicpm3(cfg, D, H, L)
    if mt == "falcon":
        return _parse_falcon(cfg, D, H, L)
    if mt == "llama4_text":
        return _parse_llama4(cfg, D, H)
    if mt in GQA_FAMILY_TYPES:
        return _parse_gqa_family(cfg, mt, D, H, L)
    if mt in GQA_MODEL_TYPES:
        G = int(cfg.get("num_key_value_heads") or H)
        d = int(cfg.get("head_dim") or D // H)
        # max_position_embeddings defaults (LlamaConfig, MistralConfig, Qwen2Config): read by the
        # dynamic and longrope RoPE types only.
        rope = _parse_rope(cfg, d, interleaved=False,
                           default_max_positions={"llama": 2048, "mistral": 4096 * 32,
                                                  "qwen2": 32768}[mt])
        spec = Spec(model_type=mt, kind="gqa", hidden_size=D, num_heads=H, num_layers=L,
                    rope=rope, num_kv_heads=G, head_dim=d)
        if mt == "qwen2":
            spec.qkv_bias = True
            spec.o_bias = False
        elif mt == "llama":
            ab = bool(cfg.get("attention_bias", False))
            spec.qkv_bias = ab
            spec.o_bias = ab
        # Sliding window.
        if mt == "mistral":
            spec.sliding_window = int(cfg.get("sliding_window") or 0)
        elif mt == "qwen2":
            if cfg.get("use_sliding_window", False):
                spec.sliding_window = int(cfg.get("sliding_window") or 0)
                mwl = int(cfg.get("max_window_layers", 28))
                spec.sliding_layers = [i >= mwl for i in range(L)]
        if "layer_types" in cfg and cfg["layer_types"] is not None and mt != "llama":
            spec.sliding_layers = [t == "sliding_attention" for t in cfg["layer_types"]]
            if spec.sliding_window == 0:
                spec.sliding_window = int(cfg.get("sliding_window") or 0)
        return spec
    if mt in MLA_MODEL_TYPES:
        dr = int(cfg["qk_rope_head_dim"])
        rope = _parse_rope(cfg, dr, interleaved=bool(cfg.get("rope_interleave", True)))
        return Spec(model_type=mt, kind="mla", hidden_size=D, num_heads=H, num_layers=L,
                    rope=rope,
                    q_lora_rank=int(cfg.get("q_lora_rank") or 0),
                    kv_lora_rank=int(cfg["kv_lora_rank"]),
                    qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
                    qk_rope_head_dim=dr,
                    v_head_dim=int(cfg["v_head_dim"]),
                    # DeepSeek's modeling code and transformers build q_a_layernorm and
                    # kv_a_layernorm with RMSNorm's default eps, not config.rms_norm_eps.
                    rms_norm_eps=1e-6)
    raise ValueError(f"unknown model_type {mt!r}")


def _as_spec(cfg_or_spec) -> Spec:
    return cfg_or_spec if isinstance(cfg_or_spec, Spec) else parse_config(cfg_or_spec)


def layer_prefix(layer: int, cfg_or_spec=None) -> str:
    """The attention tensors' name prefix: model.layers.N.self_attn., or for a falcon config
    (given as cfg_or_spec) transformer.h.N.self_attention."""
    if cfg_or_spec is not None and _as_spec(cfg_or_spec).falcon_layout:
        return f"transformer.h.{layer}.self_attention."
    return f"model.layers.{layer}.self_attn."


def falcon_fused_rows(spec: Spec) -> int:
    """Rows of falcon's query_key_value: 3·D (mha), D + 2d (multi_query), (H + 2G)·d (grouped)."""
    return (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim


def falcon_split(spec: Spec, fused: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """q [H·d, ...], k [G·d, ...], v [G·d, ...] rows of falcon's fused query_key_value weight
    (or bias), by FalconAttention._split_heads' view of the fused output (see _parse_falcon)."""
    H, G, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    rest = tuple(fused.shape[1:])
    if spec.falcon_layout == "mha":
        t = fused.reshape(H, 3, d, *rest)
        parts = (t[:, 0], t[:, 1], t[:, 2])
    elif spec.falcon_layout == "multi_query":
        t = fused.reshape(H + 2, d, *rest)
        parts = (t[:H], t[H:H + 1], t[H + 1:])
    else:
        t = fused.reshape(G, H // G + 2, d, *rest)
        parts = (t[:, :-2], t[:, -2], t[:, -1])
    return tuple(x.reshape(-1, *rest) for x in parts)


def expected_weight_shapes(cfg_or_spec, layer: int = 0) -> Dict[str, Tuple[int, ...]]:
    s = _as_spec(cfg_or_spec)
    p = layer_prefix(layer, s)
    D, H = s.hidden_size, s.num_heads
    out: Dict[str, Tuple[int, ...]] = {}
    if s.falcon_layout:
        out[p + "query_key_value.weight"] = (falcon_fused_rows(s), D)
        out[p + "dense.weight"] = (D, H * s.head_dim)
        if s.qkv_bias:
            out[p + "query_key_value.bias"] = (falcon_fused_rows(s),)
            out[p + "dense.bias"] = (D,)
        return out
    if s.kind == "gqa":
        G, d = s.num_kv_heads, s.head_dim
        if s.stacked_qkv:  # phi3: rows q (H·d), k (G·d), v (G·d)
            out[p + "qkv_proj.weight"] = ((H + 2 * G) * d, D)
        else:
            out[p + "q_proj.weight"] = (H * d, D)
            out[p + "k_proj.weight"] = (G * d, D)
            out[p + "v_proj.weight"] = (G * d, D)
        out[p + "o_proj.weight"] = (D, H * d)
        if s.qkv_bias:
            out[p + "q_proj.bias"] = (H * d,)
            out[p + "k_proj.bias"] = (G * d,)
            out[p + "v_proj.bias"] = (G * d,)
        if s.o_bias:
            out[p + "o_proj.bias"] = (D,)
        if s.qk_norm in (QK_NORM_PER_HEAD, QK_NORM_PER_HEAD_GEMMA):
            out[p + "q_norm.weight"] = (d,)
            out[p + "k_norm.weight"] = (d,)
        elif s.qk_norm == QK_NORM_FULL:
            out[p + "q_norm.weight"] = (H * d,)
            out[p + "k_norm.weight"] = (G * d,)
        if s.attn_sinks:
            out[p + "sinks"] = (H,)
        return out
    dn, dr, dv, rq, rk = (s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim,
                          s.q_lora_rank, s.kv_lora_rank)
    if rq:
        out[p + "q_a_proj.weight"] = (rq, D)
        out[p + "q_a_layernorm.weight"] = (rq,)
        out[p + "q_b_proj.weight"] = (H * (dn + dr), rq)
    else:
        out[p + "q_proj.weight"] = (H * (dn + dr), D)
    out[p + "kv_a_proj_with_mqa.weight"] = (rk + dr, D)
    out[p + "kv_a_layernorm.weight"] = (rk,)
    out[p + "kv_b_proj.weight"] = (H * (dn + dv), rk)
    out[p + "o_proj.weight"] = (D, H * dv)
    return out


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def yarn_mscale(s: float, m: float = 1.0) -> float:
    """mscale(s, m) = 1 if s <= 1 else 0.1·m·ln(s) + 1."""
    if s <= 1.0:
        return 1.0
    return 0.1 * m * math.log(s) + 1.0


def yarn_correction_dim(beta: float, r: int, base: float, L: int) -> float:
    """corr(β) = r·ln(L/(2π·β)) / (2·ln base)."""
    return r * math.log(L / (2.0 * math.pi * beta)) / (2.0 * math.log(base))


def yarn_correction_range(r: int, base: float, L: int, beta_fast: float = 32.0,
                          beta_slow: float = 1.0, truncate: bool = True) -> Tuple[float, float]:
    lo = yarn_correction_dim(beta_fast, r, base, L)
    hi = yarn_correction_dim(beta_slow, r, base, L)
    if truncate:
        lo = math.floor(lo)
        hi = math.ceil(hi)
    lo = max(lo, 0)
    hi = min(hi, r - 1)
    if lo == hi:
        hi += 0.001
    return lo, hi


def base_inv_freq(theta: float, r: int, freq_dim: int = 0) -> torch.Tensor:
    """θ_i = base^(-2i/r), i = 0..r/2-1 (float64); base^(-2i/freq_dim) when freq_dim is given
    (GLM's odd rotary dim, see RopeSpec.freq_dim)."""
    i = torch.arange(r // 2, dtype=_F64)
    return torch.tensor(theta, dtype=_F64) ** (-2.0 * i / (freq_dim or r))


def varies_per_call(cfg_or_spec) -> bool:
    """Whether the RoPE frequencies depend on the call's largest position (dynamic, longrope)."""
    return _as_spec(cfg_or_spec).rope.type in ("dynamic", "longrope")


def inv_freq(cfg_or_spec, seq_len: Optional[int] = None) -> torch.Tensor:
    """θ'_i. seq_len: the call's largest position + 1, which dynamic and longrope read (None: a
    call within L, i.e. dynamic's unscaled base and longrope's short factors unless minicpm3's
    table length alone exceeds L); the other types ignore it."""
    rope = _as_spec(cfg_or_spec).rope
    r = rope.rotary_dim
    if rope.type == "dynamic":
        L, s = rope.original_max_position_embeddings, rope.factor
        n = max(seq_len or 0, L)
        base = rope.theta * (s * n / L - (s - 1.0)) ** (r / (r - 2.0))
        return base_inv_freq(base, r)
    th = base_inv_freq(rope.theta, r, rope.freq_dim)
    if rope.type == "default":
        return th
    if rope.type == "longrope":
        long = max(seq_len or 0, rope.longrope_min_len) > rope.original_max_position_embeddings
        ext = torch.tensor(rope.long_factor if long else rope.short_factor, dtype=_F64)
        return th / ext
    s = rope.factor
    if rope.type == "linear":
        return th / s
    if rope.type == "llama3":
        a, b, L = rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position_embeddings
        out = th.clone()
        for i in range(th.numel()):
            t = th[i].item()
            lam = 2.0 * math.pi / t
            if lam < L / b:
                v = t
            elif lam > L / a:
                v = t / s
            else:
                m = (L / lam - a) / (b - a)
                v = (1.0 - m) * t / s + m * t
            out[i] = v
        return out
    if rope.type == "yarn":
        lo, hi = yarn_correction_range(r, rope.theta, rope.original_max_position_embeddings,
                                       rope.beta_fast, rope.beta_slow, rope.truncate)
        i = torch.arange(r // 2, dtype=_F64)
        ramp = ((i - lo) / (hi - lo)).clamp(0.0, 1.0)
        return th * (1.0 - ramp) + (th / s) * ramp
    raise ValueError(rope.type)


def attention_factor(cfg_or_spec) -> float:
    """Multiplier on cos and sin (YaRN and longrope; 1 otherwise)."""
    rope = _as_spec(cfg_or_spec).rope
    if rope.type == "longrope":
        return float(rope.attention_factor)
    if rope.type != "yarn":
        return 1.0
    if rope.attention_factor is not None:
        return float(rope.attention_factor)
    s = rope.factor
    if rope.mscale and rope.mscale_all_dim:
        return yarn_mscale(s, rope.mscale) / yarn_mscale(s, rope.mscale_all_dim)
    return yarn_mscale(s, 1.0)


def softmax_scale(cfg_or_spec) -> float:
    s = _as_spec(cfg_or_spec)
    if s.kind == "gqa" and s.scale_override is not None:
        return s.scale_override
    if s.kind == "gqa":
        return s.head_dim ** -0.5
    scale = (s.qk_nope_head_dim + s.qk_rope_head_dim) ** -0.5
    if s.rope.type == "yarn" and s.rope.mscale_all_dim:
        m = yarn_mscale(s.rope.factor, s.rope.mscale_all_dim)
        scale = scale * m * m
    return scale


def rope_for_layer(cfg_or_spec, layer: int) -> Spec:
    """The spec whose `rope` rotates `layer`: gemma3_text's sliding layers use `sliding_rope`
    (rope_local_base_freq, no scaling), every other layer `rope`."""
    s = _as_spec(cfg_or_spec)
    if s.sliding_rope is not None and s.is_sliding_layer(layer):
        return replace(s, rope=s.sliding_rope)
    return s


def prefill_calls(S: int, n: int) -> list:
    """The calls of `attn forward --prefill n` over S slots: n tokens, then one slot per step."""
    assert 1 <= n <= S, (n, S)
    return [n] + [1] * (S - n)


def rope_cos_sin(cfg_or_spec, position_ids: torch.Tensor,
                 calls: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of p·θ'_i times the attention factor: float64 [B, S, r/2].

    calls: consecutive slot counts summing to S (None: one call). For dynamic and longrope each
    call's slots use the frequencies of that call's largest position over the whole batch."""
    spec = _as_spec(cfg_or_spec)
    pos = position_ids.to(_F64)
    if not varies_per_call(spec):
        ang = pos[..., None] * inv_freq(spec)
    else:
        S = pos.shape[-1]
        calls = [S] if calls is None else list(calls)
        assert sum(calls) == S and all(c > 0 for c in calls), (calls, S)
        parts, start = [], 0
        for c in calls:
            seg = position_ids[:, start:start + c]
            largest = int(seg.max().item())
            parts.append(pos[:, start:start + c, None] * inv_freq(spec, seq_len=largest + 1))
            start += c
        ang = torch.cat(parts, dim=1)
    af = attention_factor(spec)
    return torch.cos(ang) * af, torch.sin(ang) * af


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
               interleaved: bool, prec: Precision = EXACT) -> torch.Tensor:
    """x [B, S, heads, w]; cos/sin [B, S, r/2]. Rotates the first r coordinates.

    interleaved: pairs (x[2i], x[2i+1]); rotate-half: pairs (x[i], x[i + r/2]).
    At a lower precision, cos and sin are rounded to it and the rotated part is rounded once.
    """
    r = rotary_dim
    c = prec(cos[:, :, None, :])
    s = prec(sin[:, :, None, :])
    xr, xp = x[..., :r], x[..., r:]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        y1 = x1 * c - x2 * s
        y2 = x1 * s + x2 * c
        yr = torch.stack((y1, y2), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
        y1 = x1 * c - x2 * s
        y2 = x1 * s + x2 * c
        yr = torch.cat((y1, y2), dim=-1)
    return torch.cat((prec(yr), xp), dim=-1)


# --------------------------------------------------------------------------------------------
# Masks and the attention core
# --------------------------------------------------------------------------------------------


def left_padding(B: int, S: int, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int64 [B]: each row's number of leading padding slots (transformers'
    create_chunked_causal_mask: (cumsum(mask) == 0).sum())."""
    if attention_mask is None:
        return torch.zeros(B, dtype=torch.int64)
    keep = (attention_mask.to(_F64) != 0).to(torch.int64)
    return (keep.cumsum(-1) == 0).sum(-1)


def visible_mask(B: int, S: int, attention_mask: Optional[torch.Tensor] = None,
                 window: int = 0, chunk: int = 0,
                 chunk_from_first_token: bool = False) -> torch.Tensor:
    """bool [B, S(query slot p), S(key slot t)].

    chunk C (llama4_text's chunked layers): additionally t // C == p // C over slots, or with
    chunk_from_first_token (t - lp) // C == (p - lp) // C, lp the row's leading padding."""
    p = torch.arange(S)[:, None]
    t = torch.arange(S)[None, :]
    vis = t <= p
    if window:
        vis = vis & (t > p - window)
    vis = vis[None].expand(B, S, S).clone()
    if chunk:
        lp = (left_padding(B, S, attention_mask) if chunk_from_first_token
              else torch.zeros(B, dtype=torch.int64))[:, None, None]
        pc = torch.div(p[None] - lp, chunk, rounding_mode="floor")
        tc = torch.div(t[None] - lp, chunk, rounding_mode="floor")
        vis = vis & (pc == tc)
    if attention_mask is not None:
        keep = attention_mask.to(_F64) != 0
        vis = vis & keep[:, None, :]
    return vis


def layer_visible_mask(spec: Spec, layer: int, B: int, S: int,
                       attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """visible_mask with the layer's window and chunk (GQA layers)."""
    return visible_mask(B, S, attention_mask, spec.window_for_layer(layer),
                        spec.chunk_for_layer(layer), spec.chunk_from_first_token)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """BLOOM's / Falcon's build_alibi_tensor slopes, exact (float64 [H]): n' = 2^floor(log2 H);
    2^(-8(h+1)/n') for h < n', then 2^(-4(2j+1)/n') for the remaining heads."""
    n = 2 ** int(math.floor(math.log2(num_heads)))
    out = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    out += [2.0 ** (-4.0 * (2 * j + 1) / n) for j in range(min(n, num_heads - n))]
    return torch.tensor(out, dtype=_F64)


def alibi_bias(spec: Spec, B: int, S: int,
               attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float64 [B, H, 1, S]: slope_h · pos(t), pos(t) = (cumsum(mask) - 1)·mask (t without a
    mask); with spec.alibi_bf16, transformers' bf16(bf16(slope)·pos)."""
    if attention_mask is None:
        keep = torch.ones(B, S, dtype=torch.int64)
    else:
        keep = (attention_mask.to(_F64) != 0).to(torch.int64)
    pos = ((keep.cumsum(-1) - 1) * keep).to(_F64)
    slopes = alibi_slopes(spec.num_heads)
    if spec.alibi_bf16:
        slopes = slopes.to(torch.bfloat16).to(_F64)
    bias = slopes[None, :, None] * pos[:, None, :]
    if spec.alibi_bf16:
        bias = bias.to(torch.bfloat16).to(_F64)
    return bias[:, :, None, :]


def temperature_scales(spec: Spec, S: int) -> torch.Tensor:
    """float64 [S]: Llama 4's query multiplier on NoPE layers at cache slots 0..S-1,
    log(floor((slot + 1) / floor_scale) + 1)·attn_scale + 1."""
    slot = torch.arange(S, dtype=_F64)
    return torch.log1p(torch.floor((slot + 1.0) / spec.floor_scale)) * spec.attn_scale + 1.0


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: torch.Tensor,
           scale: float, prec: Precision = EXACT,
           sinks: Optional[torch.Tensor] = None,
           softcap: Optional[float] = None,
           logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [B,S,H,dk], k [B,T,H,dk], v [B,T,H,dv], vis [B,S,T] -> [B,S,H,dv].

    sinks [H] (gpt_oss): each head's sink logit joins every row's softmax as one more column,
    which is then dropped (HF's eager_attention_forward for GPT-OSS, max subtracted first).
    softcap c (gemma2): the scaled scores become c·tanh(score / c) before the mask (HF's
    eager_attention_forward for Gemma 2: divide, tanh, multiply, then add the mask).
    logit_bias [B, H, S or 1, T] (falcon's ALiBi) is added to q·k before the scale.
    Rows with no visible key give zeros."""
    scores = prec(torch.einsum("bshd,bthd->bhst", q, k))
    if logit_bias is not None:
        scores = prec(scores + logit_bias)
    scores = prec(scores * scale)
    if softcap is not None:
        scores = prec(prec(torch.tanh(prec(scores / softcap))) * softcap)
    m = vis[:, None, :, :]
    scores = scores.masked_fill(~m, float("-inf"))
    if sinks is None:
        p = prec(torch.softmax(scores, dim=-1))
    else:
        B, H, S, _ = scores.shape
        col = sinks.to(scores.dtype)[None, :, None, None].expand(B, H, S, 1)
        logits = torch.cat((scores, col), dim=-1)
        logits = prec(logits - logits.max(dim=-1, keepdim=True).values)
        p = prec(torch.softmax(logits, dim=-1))[..., :-1]
    any_vis = m.any(dim=-1, keepdim=True)
    p = torch.where(any_vis, p, torch.zeros_like(p))
    return prec(torch.einsum("bhst,bthd->bshd", p, v))


def l2_norm(x: torch.Tensor, eps: float, prec: Precision = EXACT) -> torch.Tensor:
    """Llama4TextL2Norm: x·rsqrt(mean(x²) + eps) over the last dim, no weight."""
    return prec(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float,
             prec: Precision = EXACT) -> torch.Tensor:
    var = x.pow(2).mean(-1, keepdim=True)
    return prec(prec(x * torch.rsqrt(var + eps)) * w)


def gemma_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float,
                   prec: Precision = EXACT) -> torch.Tensor:
    """Gemma3RMSNorm: x·rsqrt(mean(x²) + eps)·(1 + w), all in the working dtype (HF: float32)
    and rounded once at the end (`(x * w).to(dtype)`, not Llama's `x.to(dtype) * w`)."""
    var = x.pow(2).mean(-1, keepdim=True)
    return prec(x * torch.rsqrt(var + eps) * (1.0 + w))


def _lin(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None,
         prec: Precision = EXACT) -> torch.Tensor:
    y = x @ w.T
    if b is not None:
        y = y + b
    return prec(y)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _w(weights: Mapping[str, torch.Tensor], name: str, prec: Precision = EXACT) -> torch.Tensor:
    if name not in weights:
        raise KeyError(f"oracle: weight {name} missing")
    return prec(weights[name].to(_F64))


def gqa_forward(s: Spec, weights, x, position_ids, attention_mask, layer, interleaved,
                prec: Precision = EXACT, calls: Optional[Sequence[int]] = None):
    p = layer_prefix(layer, s)
    B, S, _ = x.shape
    H, G, d = s.num_heads, s.num_kv_heads, s.head_dim
    P = prec

    def w(name):
        return _w(weights, p + name, P)

    o_name = "dense" if s.falcon_layout else "o_proj"
    bo = w(o_name + ".bias") if s.o_bias else None
    if s.falcon_layout:  # falcon: one fused query_key_value (see falcon_split)
        wq, wk, wv = falcon_split(s, w("query_key_value.weight"))
        bq, bk, bv = (falcon_split(s, w("query_key_value.bias")) if s.qkv_bias
                      else (None, None, None))
    else:
        bq, bk, bv = ((w("q_proj.bias"), w("k_proj.bias"), w("v_proj.bias")) if s.qkv_bias
                      else (None, None, None))
        if s.stacked_qkv:  # phi3: qkv_proj rows are q (H·d), then k (G·d), then v (G·d)
            wqkv = w("qkv_proj.weight")
            wq, wk, wv = wqkv[:H * d], wqkv[H * d:(H + G) * d], wqkv[(H + G) * d:]
        else:
            wq, wk, wv = w("q_proj.weight"), w("k_proj.weight"), w("v_proj.weight")
    q = _lin(x, wq, bq, P)
    k = _lin(x, wk, bk, P)
    if s.qk_norm == QK_NORM_FULL:  # OLMo 2: the whole projection, before the head split
        q = rms_norm(q, w("q_norm.weight"), s.qk_norm_eps, P)
        k = rms_norm(k, w("k_norm.weight"), s.qk_norm_eps, P)
    q = q.view(B, S, H, d)
    k = k.view(B, S, G, d)
    if s.qk_norm == QK_NORM_PER_HEAD:  # Qwen3: each head's d-vector
        q = rms_norm(q, w("q_norm.weight"), s.qk_norm_eps, P)
        k = rms_norm(k, w("k_norm.weight"), s.qk_norm_eps, P)
    elif s.qk_norm == QK_NORM_PER_HEAD_GEMMA:  # Gemma 3: each head's d-vector, (1 + w)
        q = gemma_rms_norm(q, w("q_norm.weight"), s.qk_norm_eps, P)
        k = gemma_rms_norm(k, w("k_norm.weight"), s.qk_norm_eps, P)
    v = _lin(x, wv, bv, P).view(B, S, G, d)
    if s.uses_rope(layer):
        cos, sin = rope_cos_sin(rope_for_layer(s, layer), position_ids, calls)
        q = apply_rope(q, cos, sin, s.rope.rotary_dim, interleaved, P)
        k = apply_rope(k, cos, sin, s.rope.rotary_dim, interleaved, P)
        if s.l2_qk_norm:  # Llama 4: after RoPE, RoPE layers only
            q = l2_norm(q, s.rms_norm_eps, P)
            k = l2_norm(k, s.rms_norm_eps, P)
    elif s.nope_layers is not None and s.temperature_tuning:  # Llama 4 NoPE layers
        q = P(q * P(temperature_scales(s, S))[None, :, None, None])
    rep = H // G
    k = k.repeat_interleave(rep, dim=2)  # head h reads kv head h // rep
    v = v.repeat_interleave(rep, dim=2)
    vis = layer_visible_mask(s, layer, B, S, attention_mask)
    sinks = w("sinks") if s.attn_sinks else None
    bias = alibi_bias(s, B, S, attention_mask) if s.alibi else None
    o = attend(q, k, v, vis, softmax_scale(s), P, sinks, s.softcap, bias).reshape(B, S, H * d)
    return _lin(o, w(o_name + ".weight"), bo, P)


def mla_forward(s: Spec, weights, x, position_ids, attention_mask, layer, interleaved, form,
                prec: Precision = EXACT, calls: Optional[Sequence[int]] = None):
    p = layer_prefix(layer)
    B, S, _ = x.shape
    H, dn, dr, dv, rk = (s.num_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim,
                         s.kv_lora_rank)
    eps = s.rms_norm_eps
    P = prec

    def w(name):
        return _w(weights, p + name, P)

    if s.q_lora_rank:
        cq = rms_norm(_lin(x, w("q_a_proj.weight"), None, P), w("q_a_layernorm.weight"), eps, P)
        q = _lin(cq, w("q_b_proj.weight"), None, P)
    else:
        q = _lin(x, w("q_proj.weight"), None, P)
    q = q.view(B, S, H, dn + dr)
    q_nope, q_pe = q[..., :dn], q[..., dn:]
    kv = _lin(x, w("kv_a_proj_with_mqa.weight"), None, P)
    c = rms_norm(kv[..., :rk], w("kv_a_layernorm.weight"), eps, P)  # [B,S,rk]
    k_pe = kv[..., rk:].reshape(B, S, 1, dr)
    cos, sin = rope_cos_sin(s, position_ids, calls)
    q_pe = apply_rope(q_pe, cos, sin, s.rope.rotary_dim, interleaved, P)
    k_pe = apply_rope(k_pe, cos, sin, s.rope.rotary_dim, interleaved, P)
    vis = visible_mask(B, S, attention_mask, 0)
    scale = softmax_scale(s)
    wkvb = w("kv_b_proj.weight")  # [H*(dn+dv), rk]
    if form == "naive":
        kvb = _lin(c, wkvb, None, P).view(B, S, H, dn + dv)
        k_nope, v = kvb[..., :dn], kvb[..., dn:]
        k = torch.cat((k_nope, k_pe.expand(B, S, H, dr)), dim=-1)
        qf = torch.cat((q_nope, q_pe), dim=-1)
        o = attend(qf, k, v, vis, scale, P)  # [B,S,H,dv]
    elif form == "absorbed":
        wkv = wkvb.view(H, dn + dv, rk)
        w_uk, w_uv = wkv[:, :dn, :], wkv[:, dn:, :]
        q_lat = P(torch.einsum("bshn,hnr->bshr", q_nope, w_uk))  # [B,S,H,rk]
        qa = torch.cat((q_lat, q_pe), dim=-1)  # [B,S,H,rk+dr]
        krow = torch.cat((c, k_pe[:, :, 0, :]), dim=-1)  # [B,S,rk+dr] shared by all heads
        ka = krow[:, :, None, :].expand(B, S, H, rk + dr)
        va = c[:, :, None, :].expand(B, S, H, rk)
        ctx = attend(qa, ka, va, vis, scale, P)  # [B,S,H,rk]
        o = P(torch.einsum("bshr,hvr->bshv", ctx, w_uv))
    else:
        raise ValueError(form)
    return _lin(o.reshape(B, S, H * dv), w("o_proj.weight"), None, P)


def default_position_ids(B: int, S: int) -> torch.Tensor:
    return torch.arange(S, dtype=torch.int64)[None].expand(B, S).clone()


def forward(cfg_or_spec, weights: Mapping[str, torch.Tensor], hidden_states: torch.Tensor,
            position_ids: Optional[torch.Tensor] = None,
            attention_mask: Optional[torch.Tensor] = None, layer: int = 0,
            mla_form: str = "naive", interleaved: Optional[bool] = None,
            compute_dtype: torch.dtype = torch.float64,
            out_dtype: torch.dtype = torch.float32,
            calls: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The attention layer's output [B, S, D] (out_dtype, default float32), computed in float64.

    `calls` splits the S slots into consecutive calls (e.g. `prefill_calls(S, n)` for
    `attn forward --prefill n`); only the per-call RoPE types (dynamic, longrope) depend on it.
    `interleaved` overrides the config's RoPE pairing (for the pairing-trap test only).
    `compute_dtype` (float32, bfloat16, float16) computes at that precision instead: the
    weights and hidden_states are rounded to it and so is every op's result (`Precision`)."""
    s = _as_spec(cfg_or_spec)
    P = Precision(compute_dtype)
    x = P(hidden_states.to(_F64))
    B, S, D = x.shape
    assert D == s.hidden_size, (D, s.hidden_size)
    if position_ids is None:
        position_ids = default_position_ids(B, S)
    il = s.rope.interleaved if interleaved is None else interleaved
    if s.kind == "gqa":
        y = gqa_forward(s, weights, x, position_ids, attention_mask, layer, il, P, calls)
    else:
        y = mla_forward(s, weights, x, position_ids, attention_mask, layer, il, mla_form, P,
                        calls)
    return y.to(out_dtype)


def with_pairing(spec: Spec, interleaved: bool) -> Spec:
    return replace(spec, rope=replace(spec.rope, interleaved=interleaved))
