# SPDX-License-Identifier: Apache-2.0
"""The presets against transformers' own reading of the same models (issue 11).

For each preset taken from a published config.json vendored in configs/, transformers' config
class is built from that file (XConfig(**file)) and, where the preset's source note says the
class defaults are that model's values, from the defaults alone (XConfig()), with the keys in
which the published file differs from the defaults listed explicitly. attn's reading of the
preset (attn.info, and one layer built by attn.Attention.random for the per-layer fields) must
agree on the attention-relevant keys: hidden size, heads, kv heads, head_dim, layers, context,
rope theta, the window and which layers slide, the soft-cap and the softmax scale.

Skipped when transformers is not installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent.parent

# The keys that the two public copies of Qwen/Qwen1.5-MoE-A2.7B-Chat's config.json share (see
# src/io/presets.cc); the model is not vendored.
QWEN15_MOE_CHAT = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
    "intermediate_size": 5632, "max_position_embeddings": 32768, "max_window_layers": 21,
    "moe_intermediate_size": 1408, "num_attention_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "shared_expert_intermediate_size": 5632,
    "sliding_window": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
    "vocab_size": 151936,
}

# The keys of THUDM/GLM-4-9B-0414's config.json on which the public copies named in
# src/io/presets.cc agree (attention keys) and the MLP/vocabulary keys of the saved fine-tune
# copy; the model is not vendored.
GLM4_9B_0414 = {
    "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "hidden_size": 4096,
    "intermediate_size": 13696, "num_attention_heads": 32, "num_key_value_heads": 2,
    "head_dim": 128, "num_hidden_layers": 40, "max_position_embeddings": 32768,
    "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "attention_bias": True, "tie_word_embeddings": False, "vocab_size": 151552,
}

# The attention keys of meta-llama/Llama-4-Scout-17B-16E's text_config as src/io/presets.cc
# gives them, but for attn_temperature_tuning: the published 4 is refused by transformers 5's
# strict Llama4TextConfig (a bool field), so its truth value is passed.
LLAMA4_SCOUT_TEXT = {
    "model_type": "llama4_text", "hidden_size": 5120, "num_attention_heads": 40,
    "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 48,
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "attention_bias": False, "attention_chunk_size": 8192, "use_qk_norm": True,
    "attn_temperature_tuning": True, "floor_scale": 8192, "attn_scale": 0.1,
    "no_rope_layers": [0 if (i + 1) % 4 == 0 else 1 for i in range(48)],
}

# preset, vendored file (or the config itself), transformers config class, keys where the published file differs from
# the class defaults (None: the defaults are not claimed to be that model).
CASES = [
    # MixtralConfig's docstring names mistralai/Mixtral-8x7B-v0.1; its defaults match the
    # published file except max_position_embeddings (4096 * 32 = 131072 vs 32768).
    ("mixtral-8x7b", "mixtral-8x7b-v0.1.json", "MixtralConfig",
     {"max_position_embeddings": 32768}),
    # Gemma2Config's defaults are google/gemma-2-2b's values (its docstring names a
    # "google/gemma2-7b", which is not a published checkpoint).
    ("gemma-2-2b", "gemma-2-2b-it.json", "Gemma2Config", {}),
    # Olmo2Config's docstring names allenai/OLMo-2-1124-7B, but its defaults are not that model
    # (max_position_embeddings 2048, rope_theta 1e4, rms_norm_eps 1e-5): no defaults claim.
    ("olmo-2-7b", "olmo-2-1124-7b.json", "Olmo2Config", None),
    # GraniteConfig's defaults are Llama's (4096, 32 heads, no GQA, 2048 tokens), not
    # ibm-granite/granite-3.0-8b-base, which its docstring names: no defaults claim.
    ("granite-3.3-8b", "granite-3.3-8b-instruct.json", "GraniteConfig", None),
    # Qwen2MoeConfig's docstring names Qwen/Qwen1.5-MoE-A2.7B; its defaults are the -Chat model's
    # attention keys but for rope_theta (transformers 5 defaults to 1e4) and the window keys
    # (unused: use_sliding_window is false).
    ("qwen1.5-moe-a2.7b-chat", QWEN15_MOE_CHAT, "Qwen2MoeConfig",
     {"rope_theta": 1000000.0, "sliding_window": 32768, "max_window_layers": 21}),
    # Gemma3TextConfig's docstring names google/gemma-3-4b-it, but its defaults (2304 wide, 26
    # layers) are no Gemma 3 model: no defaults claim.
    ("gemma-3-270m", "gemma-3-270m.json", "Gemma3TextConfig", None),
    # GlmConfig's docstring names THUDM/glm-4-9b-chat; its defaults are the published
    # transformers-format file, key for key (the file leaves partial_rotary_factor to the
    # class's 0.5).
    ("glm-4-9b-chat-hf", "glm-4-9b-chat-hf.json", "GlmConfig", {}),
    # FalconConfig's defaults are tiiuae/falcon-7b (MQA, RoPE), not Falcon-RW: no defaults claim.
    ("falcon-rw-1b", "falcon-rw-1b.json", "FalconConfig", None),
    # Glm4Config's defaults are GLM-4-9B-Chat's (131072 positions, rms_norm_eps 1.5625e-07), not
    # the 0414 model's: no defaults claim.
    ("glm-4-9b-0414", GLM4_9B_0414, "Glm4Config", None),
    # Llama4TextConfig's defaults carry no RoPE scaling and 131072 positions: no defaults claim.
    # Its per-layer NoPE / chunking and temperature keys are checked in presets_test.cc.
    ("llama-4-scout-17b-16e", LLAMA4_SCOUT_TEXT, "Llama4TextConfig", None),
    # minicpm3-4b is MLA, which _expected does not model; presets_test.cc checks it.
]


def _published(file):
    if isinstance(file, dict):
        return dict(file)
    return json.loads((REPO / "configs" / file).read_text())


def _theta(config, kind):
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and kind in params:  # Gemma 3: one RoPE per layer type
        params = params[kind]
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]
    return config.rope_theta


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _layer_types(config):
    types = getattr(config, "layer_types", None)
    if types is None:  # transformers without layer_types: every layer alike
        window = getattr(config, "sliding_window", None)
        kind = "sliding_attention" if window else "full_attention"
        types = [kind] * config.num_hidden_layers
    return list(types)


def _expected(config):
    """The attention-relevant numbers of a transformers config, computed here."""
    d = _head_dim(config)
    hidden, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    bias = bool(getattr(config, "attention_bias", False) or getattr(config, "qkv_bias", False))
    params = hidden * heads * d + 2 * hidden * kv * d + heads * d * hidden
    if bias:
        params += heads * d + 2 * kv * d
    if config.model_type == "olmo2":  # q_norm (H·d) and k_norm (G·d) over whole projections
        params += heads * d + kv * d
    if config.model_type == "gemma3_text":  # per-head q_norm and k_norm, d each
        params += 2 * d
    if config.model_type == "falcon" and config.bias:  # biased query_key_value and dense
        params += heads * d + 2 * kv * d + hidden
    scalar = getattr(config, "query_pre_attn_scalar", None)
    scale = (scalar if scalar else d) ** -0.5
    if config.model_type == "granite":
        scale = config.attention_multiplier
    window = getattr(config, "sliding_window", None) or 0
    if getattr(config, "use_sliding_window", True) is False:
        window = 0
    softcap = getattr(config, "attn_logit_softcapping", None)
    return {
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": d,
        "num_layers": config.num_hidden_layers,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": {kind: float(_theta(config, kind))
                       for kind in ("sliding_attention", "full_attention")},
        "sliding_window": window,
        "layer_types": _layer_types(config) if window else ["full_attention"] * 2,
        "softmax_scale": scale,
        "softcap": float(softcap or 0.0),
        "values_per_token_layer": 2 * kv * d,
        "attention_params_layer": params,
    }


def _check(attn, preset, want):
    info = attn.info(preset)
    assert info["layers"] == want["num_layers"]
    assert info["context"] == want["max_position_embeddings"]
    assert info["forms"][0]["values_per_token_layer"] == want["values_per_token_layer"]
    assert info["attention_params_layer"] == want["attention_params_layer"]
    types = want["layer_types"]
    # Layers 0 and 1 and the first full-attention layer (Gemma 3's 5).
    layers = sorted({0, 1, types.index("full_attention") if "full_attention" in types else 0})
    for layer in layers:
        kind = types[layer]
        got = attn.Attention.random(preset, layer=layer).config
        assert got["hidden_size"] == want["hidden_size"]
        assert got["num_heads"] == want["num_heads"]
        assert got["num_kv_heads"] == want["num_kv_heads"]
        assert got["head_dim"] == want["head_dim"]
        assert got["num_layers"] == want["num_layers"]
        assert got["max_position_embeddings"] == want["max_position_embeddings"]
        # attn.Attention.config reports the model's rope_theta (the full-attention layers'); Gemma
        # 3's local base for the sliding layers is checked in tests/cpp/presets_test.cc.
        assert got["rope_theta"] == want["rope_theta"]["full_attention"], (layer, kind)
        assert math.isclose(got["softmax_scale"], want["softmax_scale"], rel_tol=1e-12)
        window = want["sliding_window"] if kind == "sliding_attention" else 0
        assert got["sliding_window"] == window, (layer, kind)


@pytest.mark.parametrize("preset,file,cls,overrides", CASES, ids=[c[0] for c in CASES])
def test_preset_agrees_with_transformers_reading_of_the_published_file(
        attn, preset, file, cls, overrides):
    config = getattr(transformers, cls)(**_published(file))
    want = _expected(config)
    _check(attn, preset, want)
    # The soft-cap is not in attn.Attention.config: compare through the preset's own JSON text
    # by way of the vendored file (presets_test.cc checks preset == file field by field).
    assert float(_published(file).get("attn_logit_softcapping") or 0.0) == want["softcap"]


@pytest.mark.parametrize("preset,file,cls,overrides", [c for c in CASES if c[3] is not None],
                         ids=[c[0] for c in CASES if c[3] is not None])
def test_class_defaults_are_the_published_model(attn, preset, file, cls, overrides):
    defaults = _expected(getattr(transformers, cls)(**overrides))
    published = _expected(getattr(transformers, cls)(**_published(file)))
    assert defaults == published
    _check(attn, preset, defaults)
