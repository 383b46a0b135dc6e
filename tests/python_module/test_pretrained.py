# SPDX-License-Identifier: Apache-2.0
"""Loading models from their directories: Attention.from_pretrained and attn.load_attention_layers
over sharded checkpoints (model.safetensors.index.json) with weights in their stored dtype, and
outputs that keep the dtype of hidden_states. The files are written here with a few lines of
NumPy (the safetensors layout: u64 header length, JSON header, data), so the NumPy-only run
needs nothing more."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

LLAMA = {
    "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "num_hidden_layers": 2, "rope_theta": 10000.0,
    "max_position_embeddings": 256,
}
RNG = np.random.default_rng(7)


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def write_model(directory, weights, shards):
    """config.json plus `weights` spread round-robin over `shards` files and their index."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA))
    names = sorted(weights)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {name: files[i % shards] for i, name in enumerate(names)}
    for file in files:
        write_safetensors(directory / file,
                          {n: weights[n] for n in names if weight_map[n] == file})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def f16_weights(attn):
    weights = {}
    for layer in range(LLAMA["num_hidden_layers"]):
        for name, value in attn.random_weights(LLAMA, seed=11 + layer, layer=layer).items():
            weights[name] = value.astype(np.float16)
    return weights


def test_from_pretrained_reads_shards_in_stored_dtype(attn, tmp_path):
    weights = f16_weights(attn)
    write_model(tmp_path / "model", weights, shards=3)
    x = RNG.standard_normal((2, 9, 64)).astype(np.float32)
    for layer in (0, 1):
        loaded = attn.Attention.from_pretrained(tmp_path / "model", layer=layer)
        # The same float16 values handed over as float32: the projections must agree (the
        # stored weights widen exactly; only the summation order may differ).
        as_f32 = {k: v.astype(np.float32) for k, v in weights.items()}
        direct = attn.Attention.from_config(LLAMA, as_f32, layer=layer)
        want = direct.forward(x)
        got = loaded.forward(x)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        # Through the index file and via from_config on the directory as well.
        via_index = attn.Attention.from_config(
            LLAMA, tmp_path / "model" / "model.safetensors.index.json", layer=layer)
        np.testing.assert_array_equal(via_index.forward(x), got)


def test_load_attention_layers(attn, tmp_path):
    weights = f16_weights(attn)
    write_model(tmp_path / "model", weights, shards=2)
    layers = attn.load_attention_layers(tmp_path / "model")
    assert [layer.layer for layer in layers] == [0, 1]
    x = RNG.standard_normal((1, 5, 64)).astype(np.float32)
    for layer in layers:
        one = attn.Attention.from_pretrained(tmp_path / "model", layer=layer.layer)
        np.testing.assert_array_equal(layer.forward(x), one.forward(x))
    assert [layer.layer for layer in attn.load_attention_layers(tmp_path / "model", [1])] == [1]
    with pytest.raises(ValueError, match="layer 2 out of range"):
        attn.load_attention_layers(tmp_path / "model", [2])


def test_missing_shard_and_missing_tensor(attn, tmp_path):
    weights = f16_weights(attn)
    write_model(tmp_path / "model", weights, shards=2)
    (tmp_path / "model" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(KeyError, match="model-00002-of-00002.safetensors"):
        attn.Attention.from_pretrained(tmp_path / "model")
    del weights["model.layers.1.self_attn.k_proj.weight"]
    write_model(tmp_path / "other", weights, shards=2)
    attn.Attention.from_pretrained(tmp_path / "other", layer=0)
    with pytest.raises(KeyError, match="model.layers.1.self_attn.k_proj.weight"):
        attn.Attention.from_pretrained(tmp_path / "other", layer=1)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_output_keeps_numpy_dtype(attn, dtype):
    layer = attn.Attention.random(LLAMA, seed=3)
    x = RNG.standard_normal((1, 3, 64)).astype(dtype)
    y = layer.forward(x)
    assert y.dtype == dtype
    cache = layer.new_cache(1, 8)
    assert layer.prefill(x, cache).dtype == dtype
    assert layer.decode(x[:, 0], cache).dtype == dtype


def test_float16_overflow_is_an_error(attn):
    # Hidden states this large give outputs beyond float16's range: refused, not inf.
    weights = attn.random_weights(LLAMA, seed=3)
    weights["model.layers.0.self_attn.o_proj.weight"] *= 1e6
    layer = attn.Attention.from_config(LLAMA, weights)
    x = np.full((1, 2, 64), 1.0, dtype=np.float16)
    assert np.isfinite(layer.forward(x.astype(np.float32))).all()
    with pytest.raises(ValueError, match="overflows float16"):
        layer.forward(x)


def test_torch_bfloat16_in_bfloat16_out(attn):
    from conftest import require_torch
    torch = require_torch()
    layer = attn.Attention.random(LLAMA, seed=3)
    x = torch.randn(2, 4, 64).to(torch.bfloat16)
    y = layer.forward(x)
    assert y.dtype == torch.bfloat16
    want = layer.forward(x.float())
    assert torch.equal(y, want.to(torch.bfloat16))
