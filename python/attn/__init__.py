# SPDX-License-Identifier: Apache-2.0
"""attn: LLM attention (MHA/GQA/MQA, DeepSeek MLA) exactly as checkpoints define it.

Layers, KV caches and kernels on NumPy arrays and PyTorch CPU tensors, without copying inputs
that are already in a layout the library reads. See help(attn.Attention), help(attn.attention)
and docs/python.md.
"""

from attn._attn import (  # noqa: F401  (re-exported API)
    Attention,
    Cache,
    PagedCache,
    __version__,
    attention,
    backend,
    get_num_threads,
    info,
    load_attention_layers,
    load_safetensors,
    mla_attention,
    presets,
    random_weights,
    save_random_weights,
    set_num_threads,
)

__all__ = [
    "Attention",
    "Cache",
    "PagedCache",
    "attention",
    "backend",
    "get_num_threads",
    "info",
    "load_attention_layers",
    "load_safetensors",
    "mla_attention",
    "presets",
    "random_weights",
    "save_random_weights",
    "set_num_threads",
]
