# SPDX-License-Identifier: Apache-2.0
"""Outputs are checked like inputs (issue 15): a finite input can still overflow inside the
computation, and the result must then be an error naming where, not a silent NaN. Also the
softmax scale of the kernels must be a finite positive number. NumPy only, so this runs under
NumPy 1.x (system Python) and 2.x (the pip-install venv) alike."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import LLAMA


def qkv(rng):
    q = rng.standard_normal((1, 3, 4, 8), dtype=np.float32)
    k = rng.standard_normal((1, 3, 2, 8), dtype=np.float32)
    v = rng.standard_normal((1, 3, 2, 8), dtype=np.float32)
    return q, k, v


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 0.0, -0.5, 1e39])
def test_attention_scale_must_be_finite_positive(attn, scale):
    q, k, v = qkv(np.random.default_rng(0))
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        attn.attention(q, k, v, scale=scale)
    kv = np.random.default_rng(1).standard_normal((1, 3, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        attn.mla_attention(np.zeros((1, 1, 2, 16), np.float32), kv, value_dim=8, scale=scale)


def test_attention_accepts_a_small_positive_scale(attn):
    q, k, v = qkv(np.random.default_rng(0))
    assert np.isfinite(attn.attention(q, k, v, scale=1e-30)).all()


def test_finite_inputs_that_overflow_raise_naming_the_position(attn):
    """Values of 3e38 are finite, but the weighted sum over two or more keys overflows fp32.
    Causal: query 0 sees one key (3e38, finite), query 1 sees two (Inf)."""
    q, k, v = qkv(np.random.default_rng(2))
    q[:] = 0.0
    v[:] = 3e38
    with pytest.raises(ValueError, match=r"attention output: non-finite value .* at \[0, 1, 0, 0\]"):
        attn.attention(q, k, v)
    # check_finite=False hands the NaN back, as documented.
    out = attn.attention(q, k, v, check_finite=False)
    assert not np.isfinite(out[0, 1]).all()


def test_layer_output_overflow_names_the_layer_and_token(attn):
    """Weights large enough that the output projection overflows fp32: an error naming layer 3
    and the first bad position, for every way of calling the layer. Positive inputs and value
    weights make every attention output >= 1.28, so 3e38 times it is Inf at every position."""
    cfg = dict(LLAMA, num_hidden_layers=4)
    weights = attn.random_weights(cfg, seed=1, layer=3)
    for name, value in weights.items():
        if name.endswith("v_proj.weight"):
            weights[name] = np.full_like(value, 0.1)
        if name.endswith("o_proj.weight"):
            weights[name] = np.full_like(value, 3e38)
    layer = attn.Attention.from_config(cfg, weights, layer=3)
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((1, 2, cfg["hidden_size"]), dtype=np.float32)) + 0.1
    pattern = r"layer 3 output: non-finite value .* at \[0, 0, 0\]"
    with pytest.raises(ValueError, match=pattern):
        layer.forward(x)
    with pytest.raises(ValueError, match=pattern):
        layer.prefill_then_decode(x, 1)
    cache = layer.new_cache(batch=1, capacity=8)
    with pytest.raises(ValueError, match=pattern):
        layer.prefill(x, cache)
