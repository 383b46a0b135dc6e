# SPDX-License-Identifier: Apache-2.0
"""attn: LLM attention (MHA/GQA/MQA, DeepSeek MLA) exactly as checkpoints define it.

Layers, KV caches and kernels on NumPy arrays and PyTorch CPU tensors, without copying inputs
that are already in a layout the library reads. See help(attn.Attention), help(attn.attention)
and docs/python.md.

With PyTorch: attn.ops registers the kernels as torch operators (torch.ops.attn.attention,
torch.ops.attn.mla_attention, torch.ops.attn.sdpa) and attn.scaled_dot_product_attention is a
drop-in for torch.nn.functional.scaled_dot_product_attention (help(attn.ops)). Both are loaded
on first use: `import attn` itself never imports torch.
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


# Loaded on first use, so that `import attn` works without torch and does not pay for importing
# it: attn.ops (the torch operators) and attn.scaled_dot_product_attention.
_LAZY = {"ops": None, "scaled_dot_product_attention": "scaled_dot_product_attention"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        try:
            ops = importlib.import_module("attn.ops")
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise ImportError(f"attn.{name} needs PyTorch (>= 2.4), which is not installed; "
                              f"the rest of attn works without it") from e
        return ops if _LAZY[name] is None else getattr(ops, _LAZY[name])
    raise AttributeError(f"module 'attn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
