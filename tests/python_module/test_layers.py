# SPDX-License-Identifier: Apache-2.0
"""attn.Attention and attn.Cache: loading, outputs against the float64 oracle of the CLI suite
(tests/python/torch_reference.py), the cache API, zero-copy behaviour and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import (DSV3, LLAMA, MISTRAL, QWEN2, V2LITE, assert_unchanged, require_torch,
                      snapshot)

torch = require_torch()
from safetensors.torch import save_file  # noqa: E402  (needs torch)
import torch_reference as ref  # noqa: E402  (needs torch)

REL_TOL = 1e-4
CONFIGS = {"llama3": LLAMA, "qwen2-bias": QWEN2, "mistral-window": MISTRAL, "dsv3": DSV3,
           "v2lite": V2LITE}


def assert_matches(got, want, rel=REL_TOL):
    got = torch.as_tensor(got)
    assert tuple(got.shape) == tuple(want.shape)
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rel * want.double().abs().max().item(), f"max error {err:.3e}"


def hidden(B, S, D, seed=0):
    return torch.randn(B, S, D, generator=torch.Generator().manual_seed(seed))


def weights_torch(attn, cfg, seed=1, layer=0):
    return {k: torch.from_numpy(v) for k, v in attn.random_weights(cfg, seed, layer).items()}


def forms(cfg):
    return ["naive", "absorbed", "auto"] if cfg["model_type"].startswith("deepseek") else ["auto"]


# ============================================================================ loading


def test_config_and_weights_spellings_agree(attn, tmp_path):
    W = attn.random_weights(DSV3, seed=3)
    cpath = tmp_path / "config.json"
    cpath.write_text(json.dumps(DSV3))
    wpath = tmp_path / "w.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in W.items()}, str(wpath))
    short = {k.split("self_attn.")[1]: v for k, v in W.items()}
    state_dict = dict(W, **{"model.embed_tokens.weight": np.zeros((4, 4), np.float32),
                            "model.layers.1.self_attn.q_a_proj.weight": np.zeros(3, np.float32),
                            "lm_head.weight": np.zeros((4, 4), np.float32)})
    layers = [
        attn.Attention.random(DSV3, seed=3),
        attn.Attention.from_config(DSV3, W),
        attn.Attention.from_config(json.dumps(DSV3), short),
        attn.Attention.from_config(str(cpath), str(wpath)),
        attn.Attention.from_config(cpath, wpath),        # pathlib
        attn.Attention.from_config(str(tmp_path), wpath),  # directory holding config.json
        attn.Attention.from_config(DSV3, state_dict),
        attn.Attention.from_config(DSV3, {k: torch.from_numpy(v) for k, v in W.items()}),
    ]
    x = hidden(2, 5, DSV3["hidden_size"]).numpy()
    first = layers[0].forward(x)
    for layer in layers[1:]:
        assert np.array_equal(layer.forward(x), first)
    assert layers[0].config["kv_lora_rank"] == 32 and layers[0].layer == 0
    assert "deepseek_v3" in repr(layers[0])


def test_bf16_weights_dict_from_torch(attn):
    W = {k: v.to(torch.bfloat16) for k, v in weights_torch(attn, QWEN2).items()}
    layer = attn.Attention.from_config(QWEN2, W)
    x = hidden(1, 6, QWEN2["hidden_size"])
    assert_matches(layer.forward(x), ref.forward(QWEN2, W, x))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_oracle(attn, name):
    cfg = CONFIGS[name]
    layer_index = cfg["num_hidden_layers"] - 1
    W = weights_torch(attn, cfg, seed=5, layer=layer_index)
    layer = attn.Attention.from_config(cfg, W, layer=layer_index)
    B, S = 2, 9
    x = hidden(B, S, cfg["hidden_size"], 6)
    pos = torch.stack([torch.arange(S) + 300, torch.arange(S)])
    mask = torch.ones(B, S, dtype=torch.int64)
    mask[1, :2] = 0
    for form in forms(cfg):
        got = layer.forward(x, pos, mask, mla=form)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        want = ref.forward(cfg, W, x, pos, mask, layer=layer_index,
                           mla_form="absorbed" if form == "absorbed" else "naive")
        assert_matches(got, want)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("cache_dtype,rel", [("f32", 1e-4), ("bf16", 2e-2)])
def test_prefill_decode_through_cache(attn, name, cache_dtype, rel):
    cfg = CONFIGS[name]
    W = weights_torch(attn, cfg, seed=7)
    layer = attn.Attention.from_config(cfg, W)
    B, S, N = 2, 10, 4
    x = hidden(B, S, cfg["hidden_size"], 8).numpy()
    pos = np.stack([np.arange(S) + 50, np.arange(S) + 7])
    want = ref.forward(cfg, W, torch.from_numpy(x), torch.from_numpy(pos))
    for form in forms(cfg):
        cache = layer.new_cache(B, 16, dtype=cache_dtype, mla=form)
        assert cache.nbytes == B * 16 * layer.kv_bytes_per_token(cache_dtype, form)
        assert cache.lengths.tolist() == [0, 0]
        outs = [layer.prefill(x[:, :N], cache, pos[:, :N])]
        for s in range(N, S):
            y = layer.decode(x[:, s], cache, pos[:, s])  # [B, D] in, [B, D] out
            assert y.shape == (B, cfg["hidden_size"])
            outs.append(y[:, None])
        assert cache.lengths.tolist() == [S, S]
        assert_matches(np.concatenate(outs, axis=1), want, rel)
        assert np.array_equal(
            np.concatenate(outs, axis=1),
            layer.prefill_then_decode(x, N, pos, mla=form, cache_dtype=cache_dtype))


def test_default_positions_continue_from_cache(attn):
    layer = attn.Attention.random(LLAMA, seed=2)
    x = hidden(1, 6, LLAMA["hidden_size"], 3)
    full = layer.forward(x)
    cache = layer.new_cache(1, 6, dtype="f32")
    a = layer.prefill(x[:, :5], cache)
    b = layer.decode(x[:, 5:], cache)  # [B, 1, D] in, [B, 1, D] out
    assert b.shape == (1, 1, LLAMA["hidden_size"])
    assert_matches(torch.cat([a, b], 1), full.double(), 1e-5)


def test_ragged_lengths(attn):
    layer = attn.Attention.random(DSV3, seed=4)
    x = hidden(2, 6, DSV3["hidden_size"], 5)
    cache = layer.new_cache(2, 8, dtype="f32", mla="absorbed")
    y = layer.prefill(x, cache, lengths=np.array([6, 3]))
    assert cache.lengths.tolist() == [6, 3]
    assert torch.equal(y[1, 3:], torch.zeros_like(y[1, 3:]))
    alone = layer.forward(x[1:, :3], mla="absorbed")
    assert_matches(y[1:, :3], alone.double(), 1e-5)


def test_cache_overflow_is_value_error_and_writes_nothing(attn):
    layer = attn.Attention.random(QWEN2)
    cache = layer.new_cache(1, 4)
    layer.prefill(hidden(1, 3, QWEN2["hidden_size"]), cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        layer.prefill(hidden(1, 2, QWEN2["hidden_size"]), cache)
    assert cache.lengths.tolist() == [3]
    cache.clear()
    assert cache.lengths.tolist() == [0]
    assert cache.dtype == "bf16" and cache.mla is None and cache.capacity == 4


# ============================================================================ zero copy, outputs


def test_layer_copies_and_outputs(attn, copies):
    """hidden_states are copied once (the C++ layer takes an owning Tensor); int64 positions and
    uint8/bool masks are read in place; the output wraps the library's buffer (no copy)."""
    layer = attn.Attention.random(LLAMA)
    x = np.random.default_rng(0).standard_normal((2, 5, LLAMA["hidden_size"]), dtype=np.float32)
    pos = np.arange(10, dtype=np.int64).reshape(2, 5)
    keep = np.ones((2, 5), dtype=np.bool_)
    before = snapshot(x, pos, keep)
    start = copies()
    y = layer.forward(x, pos, keep)
    assert copies() - start == 1
    assert isinstance(y, np.ndarray) and not y.flags.owndata and y.base is not None
    assert y.flags.c_contiguous and y.dtype == np.float32
    start = copies()
    layer.forward(x, pos.astype(np.int32), keep.astype(np.int64))
    assert copies() - start == 3
    assert_unchanged(before, x, pos, keep)
    t = layer.forward(torch.from_numpy(x), torch.from_numpy(pos), torch.from_numpy(keep))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(y))


def test_decode_inputs_not_mutated(attn):
    layer = attn.Attention.random(DSV3)
    x = hidden(2, 1, DSV3["hidden_size"])
    pos = torch.tensor([[4], [9]])
    before = snapshot(x, pos)
    cache = layer.new_cache(2, 4, mla="naive")
    layer.decode(x, cache, pos)
    assert_unchanged(before, x, pos)


# ============================================================================ errors


def test_missing_weight_is_key_error(attn, tmp_path):
    W = weights_torch(attn, DSV3)
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    del W[name]
    with pytest.raises(KeyError, match="kv_b_proj.weight"):
        attn.Attention.from_config(DSV3, W)
    path = tmp_path / "w.safetensors"
    save_file(W, str(path))
    with pytest.raises(KeyError, match=name):
        attn.Attention.from_config(DSV3, path)


def test_bad_weights_are_value_errors(attn):
    W = weights_torch(attn, LLAMA)
    p = "model.layers.0.self_attn."
    bad = dict(W, **{p + "k_proj.weight": W[p + "k_proj.weight"][:-1]})
    with pytest.raises(ValueError, match="k_proj.weight"):
        attn.Attention.from_config(LLAMA, bad)
    with pytest.raises(ValueError, match="biases given"):
        attn.Attention.from_config(LLAMA, dict(W, **{"q_proj.bias": torch.zeros(128)}))
    with pytest.raises(ValueError, match="given twice"):
        attn.Attention.from_config(LLAMA, dict(W, **{"q_proj.weight": W[p + "q_proj.weight"]}))
    nan = dict(W)
    nan[p + "o_proj.weight"] = W[p + "o_proj.weight"].clone()
    nan[p + "o_proj.weight"][3, 4] = float("nan")
    with pytest.raises(ValueError, match="o_proj.weight: non-finite"):
        attn.Attention.from_config(LLAMA, nan)
    with pytest.raises(ValueError, match="expected a floating-point dtype"):
        attn.Attention.from_config(LLAMA, {k: v.to(torch.int32) for k, v in W.items()})


def test_file_errors_are_os_errors(attn, tmp_path):
    with pytest.raises(OSError, match="no_such.json"):
        attn.Attention.from_config(str(tmp_path / "no_such.json"), {})
    with pytest.raises(OSError, match="nope.safetensors"):
        attn.Attention.from_config(LLAMA, str(tmp_path / "nope.safetensors"))
    good = tmp_path / "w.safetensors"
    save_file(weights_torch(attn, LLAMA), str(good))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:-9])
    with pytest.raises(OSError, match="broken.safetensors"):
        attn.Attention.from_config(LLAMA, broken)
    with pytest.raises(OSError, match="broken.safetensors"):
        attn.load_safetensors(broken)


def test_config_errors(attn):
    with pytest.raises(ValueError, match="gpt2"):
        attn.Attention.random(dict(LLAMA, model_type="gpt2"))
    with pytest.raises(ValueError):
        attn.Attention.random("{not json")
    with pytest.raises(ValueError, match="no-such-model"):
        attn.Attention.random("no-such-model")
    with pytest.raises(TypeError):
        attn.Attention.random(42)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        attn.Attention.random(LLAMA, layer=2)
    with pytest.raises(TypeError):
        attn.Attention.from_config(LLAMA, 3.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_hidden_states(attn, bad):
    """Documented: like the CLI, non-finite hidden_states are a ValueError naming them."""
    layer = attn.Attention.random(LLAMA)
    x = hidden(1, 4, LLAMA["hidden_size"])
    x[0, 2, 5] = bad
    with pytest.raises(ValueError, match="hidden_states: non-finite"):
        layer.forward(x)
    cache = layer.new_cache(1, 4)
    with pytest.raises(ValueError, match="hidden_states: non-finite"):
        layer.prefill(x, cache)
    assert cache.lengths.tolist() == [0]


def test_bad_token_inputs(attn):
    layer = attn.Attention.random(LLAMA)
    D = LLAMA["hidden_size"]
    x = hidden(2, 4, D)
    cases = [
        (lambda: layer.forward(x[0]), r"hidden_states: expected shape \[B, S, 128\]"),
        (lambda: layer.forward(hidden(2, 4, D + 1)), "hidden_states"),
        (lambda: layer.forward(x.to(torch.int64)), "floating-point"),
        (lambda: layer.forward(x, position_ids=torch.zeros(2, 5, dtype=torch.int64)),
         "position_ids: expected shape"),
        (lambda: layer.forward(x, position_ids=torch.zeros(2, 4)), "position_ids: expected an "
                                                                  "integer dtype"),
        (lambda: layer.forward(x, attention_mask=torch.full((2, 4), 3)), "values must be 0"),
        (lambda: layer.forward(x, mla="naive"), "only to MLA models"),
        (lambda: layer.decode(x, layer.new_cache(2, 8)), "decode takes one token"),
        (lambda: layer.new_cache(2, 8, dtype="f64"), "f64"),
        (lambda: layer.new_cache(0, 8), "positive"),
        (lambda: layer.prefill_then_decode(x, 0), "prefill length 0"),
        (lambda: attn.Attention.random(DSV3).forward(hidden(1, 2, 128), mla="fast"), "fast"),
    ]
    for call, needle in cases:
        with pytest.raises(ValueError, match=needle):
            call()
    mla_cache = attn.Attention.random(DSV3).new_cache(2, 8, mla="absorbed")
    with pytest.raises(ValueError):
        layer.prefill(x, mla_cache)  # a latent MLA cache on a GQA layer


def test_load_safetensors_dtypes(attn, tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
               "b": torch.tensor([1, 0, 1], dtype=torch.int32),
               "c": torch.tensor([True, False])}, str(path))
    t = attn.load_safetensors(path)
    assert t["a"].dtype == np.float32 and t["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert t["b"].dtype == np.int64 and t["b"].tolist() == [1, 0, 1]
    assert t["c"].dtype == np.int64 and t["c"].tolist() == [1, 0]
