# SPDX-License-Identifier: Apache-2.0
"""Attention(..., shard=(rank, world)): a rank's tensor-parallel slice returns its partial output,
and the sum over the ranks of those outputs (what torch.distributed.all_reduce computes) equals
the whole layer's output to float32 rounding. Only NumPy is used: the oracle is the unsharded
layer of the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DSV3, LLAMA, QWEN2, V2LITE

# max |sum - whole| <= REL_TOL * max |whole|: only the order of o_proj's sum differs.
REL_TOL = 1e-5

# (name, config, worlds): LLAMA has 8 heads and 2 kv heads (world 4 replicates each kv head on
# two ranks), QWEN2 has q/k/v biases, DSV3 and V2LITE are MLA with and without q_lora.
CASES = [
    ("llama", LLAMA, [1, 2, 4, 8]),
    ("qwen2-bias", QWEN2, [2]),
    ("dsv3", DSV3, [2, 4]),
    ("v2lite", V2LITE, [2, 4]),
]


def assert_close(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= REL_TOL * np.abs(want).max(), f"max error {err:.3e}"


def inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 6, cfg["hidden_size"])).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=np.int64)
    return x, positions, mask


def forms(cfg):
    return ["naive", "absorbed", "auto"] if cfg["model_type"].startswith("deepseek") else ["auto"]


def outputs(layer, cfg, form):
    """forward, prefill_then_decode, and prefill + decode through a cache, of one layer."""
    x, positions, mask = inputs(cfg)
    forward = layer.forward(x, positions, mask, mla=form)
    staged = layer.prefill_then_decode(x, 3, positions, mask, mla=form)
    cache = layer.new_cache(2, 8, dtype="f32", mla=form)
    prefill = layer.prefill(x[:, :5], cache, positions[:, :5], mask[:, :5])
    decode = layer.decode(x[:, 5], cache, positions[:, 5], mask[:, 5])
    return [forward, staged, prefill, decode]


def summed(layers, cfg, form):
    parts = [outputs(layer, cfg, form) for layer in layers]
    return [np.sum([np.asarray(p[i], dtype=np.float64) for p in parts], axis=0)
            for i in range(len(parts[0]))]


@pytest.mark.parametrize("name,cfg,worlds", CASES, ids=[c[0] for c in CASES])
def test_partial_outputs_sum_to_the_whole_layer(attn, name, cfg, worlds):
    whole = attn.Attention.random(cfg, seed=3)
    for form in forms(cfg):
        want = outputs(whole, cfg, form)
        for world in worlds:
            shards = [attn.Attention.random(cfg, seed=3, shard=(rank, world))
                      for rank in range(world)]
            for got, expected in zip(summed(shards, cfg, form), want):
                assert_close(got, expected)
            if world > 1:
                # A single rank's partial output is not the whole output.
                alone = np.asarray(shards[0].forward(inputs(cfg)[0], mla=form))
                full = np.asarray(whole.forward(inputs(cfg)[0], mla=form))
                assert np.abs(alone - full).max() > 1e-3


@pytest.mark.parametrize("name,cfg", [("llama", LLAMA), ("dsv3", DSV3)])
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_shards_from_a_file(attn, tmp_path, name, cfg, dtype):
    if dtype == "fp8" and name == "llama":
        # 128 x 128 blocks: a split of 8 heads of 16 cuts inside them.
        cfg = dict(cfg, quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                             "weight_block_size": [16, 16]})
    if dtype == "fp8" and name == "dsv3":
        cfg = dict(cfg, quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                             "weight_block_size": [8, 8]})
    path = tmp_path / "layer.safetensors"
    attn.save_random_weights(path, cfg, seed=4, dtype=dtype)
    whole = attn.Attention.from_config(cfg, path)
    shards = [attn.Attention.from_config(cfg, path, shard=(rank, 2)) for rank in range(2)]
    assert shards[1].shard == (1, 2)
    assert "shard=(1, 2)" in repr(shards[1])
    for got, expected in zip(summed(shards, cfg, "auto"), outputs(whole, cfg, "auto")):
        assert_close(got, expected)


def test_dict_weights_and_cache_sizes(attn):
    weights = attn.random_weights(LLAMA, seed=5)
    whole = attn.Attention.from_config(LLAMA, weights)
    shards = [attn.Attention.from_config(LLAMA, weights, shard=(rank, 2)) for rank in range(2)]
    assert whole.shard is None
    x = inputs(LLAMA)[0]
    assert_close(np.sum([s.forward(x) for s in shards], axis=0), whole.forward(x))
    # Each rank caches its own kv heads: half of them.
    assert shards[0].kv_bytes_per_token("f32") * 2 == whole.kv_bytes_per_token("f32")
    # The config is the whole model's.
    assert shards[0].config["num_heads"] == whole.config["num_heads"]


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), (0, 3), (0, 2, 1), "0,2", (True, 2),
                                   (0.0, 2)])
def test_bad_shards_raise_value_error(attn, shard):
    with pytest.raises(ValueError, match="shard|ranks do not divide|rank"):
        attn.Attention.random(LLAMA, shard=shard)


def test_models_heads_cannot_split_raise_value_error(attn):
    olmo2 = dict(LLAMA, model_type="olmo2")
    with pytest.raises(ValueError, match="whole projection"):
        attn.Attention.random(olmo2, shard=(0, 2))
    # QWEN2's 2 kv heads cannot be replicated evenly over 3 ranks.
    with pytest.raises(ValueError, match="kv heads"):
        attn.Attention.random(QWEN2, shard=(0, 3))


@pytest.mark.parametrize("name,cfg", [("llama", LLAMA), ("dsv3", DSV3)])
def test_paged_steps_of_shards_sum_to_the_whole_layer(attn, name, cfg):
    whole = attn.Attention.random(cfg, seed=6)
    shards = [attn.Attention.random(cfg, seed=6, shard=(rank, 4)) for rank in range(4)]
    rng = np.random.default_rng(7)
    prompt = rng.standard_normal((5, cfg["hidden_size"])).astype(np.float32)
    token = rng.standard_normal((2, cfg["hidden_size"])).astype(np.float32)

    def run(layer):
        cache = layer.new_paged_cache(8, page_size=16, dtype="f32")
        seqs = [cache.add(), cache.add()]
        first = layer.step(prompt, cache, seqs, [3, 2])
        second = layer.step(token, cache, seqs, [1, 1])
        return [np.asarray(first, np.float64), np.asarray(second, np.float64)]

    want = run(whole)
    parts = [run(shard) for shard in shards]
    for i, expected in enumerate(want):
        assert_close(np.sum([p[i] for p in parts], axis=0), expected)
