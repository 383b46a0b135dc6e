# SPDX-License-Identifier: Apache-2.0
"""attn's absorbed MLA inside transformers' ``generate()``: the latent KV cache for DeepSeek-V2/V3.

transformers 5.x's ``DeepseekV3Attention`` / ``DeepseekV2Attention`` cache the compressed latent
(``kv_lora_rank + qk_rope_head_dim`` values per token) but re-expand K and V for every cached token
through ``kv_b_proj`` at every step (about ``2·T·rk·H·(dn+dv)`` FLOPs per decode step) and then run
per-head attention. :func:`use_latent_cache` swaps each of those modules for one that runs attn's
MLA layer (the same weights) in the ``absorbed`` or ``auto`` form over attn's latent cache, whose
row per token is ``[normalised latent c | rotated k_pe]`` and nothing else::

    import attn.hf_latent
    handle = attn.hf_latent.use_latent_cache(model)      # model: DeepseekV3ForCausalLM on the CPU
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)
    handle.undo()                                        # or: with use_latent_cache(model): ...

How it works:

* **Modules.** Every ``DeepseekV3Attention`` / ``DeepseekV2Attention`` of the model is replaced in
  its parent by an :class:`AttnMLAAttention` that holds an ``attn.Attention`` built from the HF
  module's ``q_a_proj``/``q_a_layernorm``/``q_b_proj`` (or ``q_proj``), ``kv_a_proj_with_mqa``,
  ``kv_a_layernorm``, ``kv_b_proj`` and ``o_proj`` (bias-free; norms with eps 1e-6, as HF builds
  them). The HF projections stay registered as submodules of the replacement, so
  ``state_dict()``/``save_pretrained`` are unchanged. Weights: float32 modules are handed over as
  a dict (the binding converts a dict into its own float32 tensors: one copy); bfloat16/float16
  modules are written once to a temporary safetensors file that attn memory-maps in the stored
  dtype (the file is unlinked at once; no float32 copy, the kernels read bf16 as transformers
  does). The binding's dict path always converts to float32, so neither route is zero-copy
  yet: that needs ``from_config`` to keep a dict's float32/bf16/f16 tensors as views.
* **RoPE, scale, positions.** attn computes RoPE (interleaved pairs for ``rope_interleave``/V2,
  rotate-half otherwise, YaRN with DeepSeek's mscale) from the model's config, and the softmax
  scale; the swap refuses a module whose ``scaling`` differs from attn's. Positions are the
  ``position_ids`` the decoder layer passes (generate derives them from the attention mask, so
  left padding is honoured); the ``position_embeddings`` argument is not used. attn forms the
  angles from the config in full precision: a model cast with ``.to(torch.bfloat16)`` also
  casts transformers' ``rotary_emb.inv_freq`` to bf16 (2^-9 relative, radians of angle at
  position 4096), and then transformers' own numbers are the ones that drift.
* **Caches.** When a transformers ``Cache`` comes in (``generate`` makes a ``DynamicCache``), the
  entry of each swapped layer is replaced by a :class:`LatentCacheLayer`: it owns the layer's
  ``attn.Cache`` (latent rows) and counts tokens, so ``get_seq_length()``, the mask sizes and
  therefore ``generate``'s position bookkeeping stay right, while its ``keys``/``values`` are
  zero-width placeholders ``[B, 1, T, 0]`` that own no storage: transformers' Cache holds no K/V,
  decompressed or latent. A call that finds the layer empty (a new generation, or a reset cache)
  starts a fresh attn cache; a cache that already holds transformers' own K/V is refused.
* **Padding.** The key-padding flags of the new tokens come from the mask the decoder layer
  passes: the last query row of a 4D mask (additive float: 0 = keep; bool: True = keep), or a 2D
  ``[B, T]`` mask; attn keeps each token's flag in its cache, so later steps mask it too. Padded
  queries get attn's zero attention row (eager gives an average over masked keys); only their own
  logits differ, never a real token's.
* **Capacity.** attn caches have a fixed capacity. ``capacity=None`` takes it from ``generate``
  (``model.generate`` is wrapped while the swap is active: prompt length + ``max_new_tokens``, or +
  ``max_length``); outside ``generate`` it is the first call's length + 1024. The caches do not
  grow: a call past the capacity is a ``ValueError`` saying so (pass ``capacity=``).
* **Refused** (``ValueError`` naming the problem): models without these MLA modules, non-CPU
  models, ``attention_bias``, other norm epsilons, a scale attn computes differently,
  ``output_attentions``, training mode with grad enabled (attn has no autograd), beam search and
  anything else that reorders, crops or re-batches the cache (assisted / prompt-lookup
  decoding), static or offloaded caches, flex-attention block masks, a batch size that changes
  under a filled cache.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

try:
    import torch
    from transformers.cache_utils import Cache, DynamicLayer
except ImportError as error:  # pragma: no cover - exercised only without the packages
    raise ImportError(
        "attn.hf_latent needs PyTorch and transformers (5.x): pip install torch transformers"
    ) from error

import attn

__all__ = [
    "AttnMLAAttention",
    "LatentCacheHandle",
    "LatentCacheLayer",
    "attn_caches",
    "use_latent_cache",
]

# Storage dtype names of attn.Cache and their sizes.
_STORAGE_BYTES = {"f32": 4, "f16": 2, "bf16": 2}
_TORCH_TO_STORAGE = {torch.float32: "f32", torch.float64: "f32", torch.float16: "f16",
                     torch.bfloat16: "bf16"}
_LATENT_FORMS = ("auto", "absorbed")
# Headroom of a cache made outside generate() when no capacity was given.
_DEFAULT_HEADROOM = 1024
# attn's (and DeepSeek's, and transformers') latent RMSNorm epsilon.
_LATENT_NORM_EPS = 1e-6


def _mla_classes() -> Tuple[type, ...]:
    classes = []
    for module_name, class_name in (
        ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3Attention"),
        ("transformers.models.deepseek_v2.modeling_deepseek_v2", "DeepseekV2Attention"),
    ):
        try:
            module = __import__(module_name, fromlist=[class_name])
        except ImportError:  # pragma: no cover - a transformers without that model
            continue
        classes.append(getattr(module, class_name))
    return tuple(classes)


def _storage_dtype(dtype: Any, model_dtype: torch.dtype) -> str:
    if dtype is None:
        return _TORCH_TO_STORAGE.get(model_dtype, "f32")
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_TO_STORAGE or dtype == torch.float64:
            raise ValueError(
                f"dtype: attn's cache stores float32, float16 or bfloat16, got {dtype}")
        return _TORCH_TO_STORAGE[dtype]
    if isinstance(dtype, str) and dtype in _STORAGE_BYTES:
        return dtype
    raise ValueError(f"dtype: expected None, 'f32', 'f16', 'bf16' or a torch dtype, got {dtype!r}")


class _Options:
    """What the swapped modules of one model share: cache dtype, MLA form, capacity rules."""

    def __init__(self, dtype: str, mla: str, capacity: Optional[int]):
        self.dtype = dtype
        self.mla = mla
        self.capacity = capacity
        self._local = threading.local()  # the capacity of the generate() call on this thread

    @property
    def generate_capacity(self) -> Optional[int]:
        return getattr(self._local, "capacity", None)

    @contextlib.contextmanager
    def generating(self, capacity: Optional[int]) -> Iterator[None]:
        previous = self.generate_capacity
        self._local.capacity = capacity
        try:
            yield
        finally:
            self._local.capacity = previous

    def capacity_for(self, tokens: int) -> int:
        if self.capacity is not None:
            return self.capacity
        hint = self.generate_capacity
        if hint is not None:
            return max(hint, tokens)
        return tokens + _DEFAULT_HEADROOM


# ---------------------------------------------------------------------------------------------
# The transformers-side cache entry


class LatentCacheLayer(DynamicLayer):
    """The entry of one swapped layer in a transformers ``Cache``.

    It owns the layer's ``attn.Cache`` (``attn_cache``: latent rows, ``kv_lora_rank +
    qk_rope_head_dim`` values per token) and the token count transformers asks for
    (``get_seq_length``, ``get_mask_sizes``). ``keys``/``values`` are zero-width ``[B, 1, T, 0]``
    placeholders without storage: nothing of the K/V lives in transformers' tensors.
    Reordering (beam search), cropping (assisted decoding) and re-batching are refused, since an
    attn cache cannot be permuted or truncated in place.
    """

    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.attn_cache: Optional[attn.Cache] = None
        self.length = 0
        self.batch = 0
        self.dtype: torch.dtype = torch.float32
        self.device = torch.device("cpu")

    # -- what the swapped attention module calls

    def start(self, attn_cache: attn.Cache, batch: int, dtype: torch.dtype) -> None:
        self.attn_cache = attn_cache
        self.batch = batch
        self.length = 0
        self.dtype = dtype
        self.is_initialized = True
        self._placeholders()

    def advance(self, tokens: int) -> None:
        self.length += tokens
        self._placeholders()

    def _placeholders(self) -> None:
        shape = (self.batch, 1, self.length, 0)
        self.keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.values = torch.empty(shape, dtype=self.dtype, device=self.device)

    # -- transformers' CacheLayerMixin interface

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(
            "this cache layer holds attn's latent rows (attn.hf_latent.use_latent_cache); it "
            "cannot take transformers' K/V: use a new cache with the original attention modules")

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0
        if self.attn_cache is not None:
            self.attn_cache.clear()
        if self.is_initialized:
            self._placeholders()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0 or self.length == 0:
            return
        raise ValueError(
            "attn's latent cache cannot be cropped (assisted or prompt-lookup decoding, "
            "DynamicCache.crop): not supported with attn.hf_latent.use_latent_cache")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.length == 0:
            return
        raise ValueError(
            "attn's latent cache cannot be reordered: beam search is not supported with "
            "attn.hf_latent.use_latent_cache (use greedy or sampling, num_beams=1)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length == 0 or repeats == 1:
            return
        raise ValueError("attn's latent cache cannot be re-batched (batch_repeat_interleave)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length == 0:
            return
        raise ValueError("attn's latent cache cannot be re-batched (batch_select_indices)")

    def offload(self) -> None:  # nothing lives in torch tensors
        pass

    def prefetch(self) -> None:
        pass

    def __repr__(self) -> str:
        cache = self.attn_cache
        where = (f"attn.Cache(batch={cache.batch}, capacity={cache.capacity}, "
                 f"dtype={cache.dtype}, mla={cache.mla})" if cache is not None else "empty")
        return f"LatentCacheLayer(tokens={self.length}, {where})"


def _latent_slot(cache: Cache, layer_idx: int) -> LatentCacheLayer:
    """The LatentCacheLayer of `layer_idx` in `cache`, put in place of a fresh DynamicLayer."""
    if not isinstance(cache, Cache):
        raise ValueError(
            f"cache: expected a transformers Cache (DynamicCache), got {type(cache).__name__} "
            "(legacy tuple caches are not supported)")
    if getattr(cache, "offloading", False):
        raise ValueError("cache: offloaded caches are not supported with attn's latent cache")
    layers = cache.layers
    if layer_idx >= len(layers):
        replicate = getattr(cache, "layer_class_to_replicate", None)
        if replicate is None:
            raise ValueError(f"cache: it has {len(layers)} layers, layer {layer_idx} asked for")
        while len(layers) <= layer_idx:
            layers.append(replicate())
    layer = layers[layer_idx]
    if isinstance(layer, LatentCacheLayer):
        return layer
    if type(layer) is not DynamicLayer:
        raise ValueError(
            f"cache: layer {layer_idx} is a {type(layer).__name__}; attn's latent cache replaces "
            "only DynamicCache layers (no static, sliding, quantized or offloaded caches)")
    if layer.get_seq_length() != 0:
        raise ValueError(
            f"cache: layer {layer_idx} already holds {layer.get_seq_length()} tokens of "
            "transformers' own K/V (filled before use_latent_cache); start with a new cache")
    slot = LatentCacheLayer()
    layers[layer_idx] = slot
    return slot


def attn_caches(cache: Cache) -> List[Optional[attn.Cache]]:
    """The ``attn.Cache`` of each layer of a transformers ``cache`` (None where a layer has none)."""
    return [layer.attn_cache if isinstance(layer, LatentCacheLayer) else None
            for layer in cache.layers]


# ---------------------------------------------------------------------------------------------
# The replacement attention module


def _key_keep(mask: Any, batch: int, new: int) -> Optional[torch.Tensor]:
    """uint8 [B, new] keep flags (1 keep, 0 pad) of the new tokens as keys, or None (no padding)."""
    if mask is None:
        return None
    if isinstance(mask, dict):  # per-layer-type masks: DeepSeek's layers are all full attention
        mask = mask.get("full_attention")
        if mask is None:
            return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"attention_mask: attn's latent cache reads key padding from a tensor mask, got "
            f"{type(mask).__name__} (flex-attention block masks are not supported)")
    if mask.dim() == 4:  # [B|1, 1|H, Q, K]: every key the last query may see, minus padding
        row = mask[:, 0, -1, :]
        keep = row if mask.dtype == torch.bool else row == 0
    elif mask.dim() == 2:  # [B, K], 1 keep / 0 pad
        keep = mask != 0
    else:
        raise ValueError(f"attention_mask: expected a 2D or 4D mask, got shape {tuple(mask.shape)}")
    if keep.shape[-1] < new:
        raise ValueError(
            f"attention_mask: {keep.shape[-1]} key columns, fewer than the {new} new tokens")
    keep = keep[:, -new:]
    if bool(keep.all()):
        return None
    return keep.expand(batch, new).to(torch.uint8).contiguous()


def _positions(position_ids: Optional[torch.Tensor], batch: int, new: int) -> Optional[torch.Tensor]:
    if position_ids is None:
        return None
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if position_ids.dim() != 2 or position_ids.shape[-1] != new:
        raise ValueError(
            f"position_ids: expected [B, {new}] or [1, {new}], got {tuple(position_ids.shape)}")
    return position_ids.to(torch.int64).expand(batch, new).contiguous()


class AttnMLAAttention(torch.nn.Module):
    """A DeepSeek-V2/V3 MLA attention module running attn's layer over attn's latent cache.

    Keeps the HF module's projections as submodules (same names, same tensors) so that the
    model's state dict is unchanged; attn holds its own copy or mapping of them (see the module
    docstring), and a later in-place change of those tensors is refused rather than ignored.
    """

    def __init__(self, original: torch.nn.Module, layer: attn.Attention, options: _Options,
                 weights: Dict[str, torch.Tensor]):
        super().__init__()
        self.config = original.config
        self.layer_idx = original.layer_idx
        self.is_causal = True
        self.num_heads = original.num_heads
        self.kv_lora_rank = original.kv_lora_rank
        self.qk_rope_head_dim = original.qk_rope_head_dim
        self.scaling = original.scaling
        for name in ("q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa",
                     "kv_a_layernorm", "kv_b_proj", "o_proj"):
            setattr(self, name, getattr(original, name))
        self.attn_layer = layer
        self._options = options
        self._snapshot = [(name, t, t.data_ptr(), t._version, t.dtype)
                          for name, t in weights.items()]

    @property
    def latent_bytes_per_token(self) -> int:
        """(kv_lora_rank + qk_rope_head_dim) × the cache dtype's size."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) * _STORAGE_BYTES[self._options.dtype]

    def _check_weights(self) -> None:
        for name, tensor, pointer, version, dtype in self._snapshot:
            if tensor.data_ptr() != pointer or tensor._version != version or tensor.dtype != dtype:
                raise ValueError(
                    f"layer {self.layer_idx}: '{name}' changed after use_latent_cache (attn holds "
                    "the weights it was built from): undo() and call use_latent_cache again")

    def forward(self, hidden_states: torch.Tensor, position_embeddings: Any = None,
                attention_mask: Any = None, cache: Optional[Cache] = None,
                **kwargs: Any) -> Tuple[torch.Tensor, None]:
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        if self.training and torch.is_grad_enabled():
            raise ValueError(
                "attn's MLA layer has no autograd: training mode with gradients is not supported "
                "(model.eval(), or torch.no_grad() / torch.inference_mode())")
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions is not supported with attn's latent cache")
        if hidden_states.device.type != "cpu":
            raise ValueError(f"hidden_states: attn runs on the CPU, got {hidden_states.device}")
        self._check_weights()
        batch, new = hidden_states.shape[0], hidden_states.shape[1]
        keep = _key_keep(attention_mask, batch, new)
        positions = _positions(kwargs.get("position_ids"), batch, new)
        layer = self.attn_layer
        if cache is None:  # use_cache=False: a stateless full prefill through a fresh cache
            return layer.forward(hidden_states, position_ids=positions, attention_mask=keep,
                                 mla=self._options.mla), None
        slot = _latent_slot(cache, self.layer_idx)
        if slot.length == 0:
            self._start(slot, batch, new, hidden_states.dtype)
        else:
            self._check_continuation(slot, batch, new)
        attn_cache = slot.attn_cache
        if new == 1:
            out = layer.decode(hidden_states, attn_cache, position_ids=positions,
                               attention_mask=keep)
        else:
            out = layer.prefill(hidden_states, attn_cache, position_ids=positions,
                                attention_mask=keep)
        slot.advance(new)
        return out, None

    def _start(self, slot: LatentCacheLayer, batch: int, new: int, dtype: torch.dtype) -> None:
        options = self._options
        capacity = options.capacity_for(new)
        if new > capacity:
            raise ValueError(
                f"layer {self.layer_idx}: {new} tokens do not fit attn's latent cache of "
                f"capacity {capacity} (use_latent_cache(capacity=...))")
        reuse = slot.attn_cache
        if (reuse is not None and reuse.batch == batch and reuse.capacity >= capacity
                and reuse.dtype == options.dtype and reuse.mla == options.mla):
            reuse.clear()
            attn_cache = reuse
        else:
            slot.attn_cache = None  # let the old storage go before the new one is made
            attn_cache = self.attn_layer.new_cache(batch=batch, capacity=capacity,
                                                   dtype=options.dtype, mla=options.mla)
        expected = self.latent_bytes_per_token
        if (attn_cache.bytes_per_token != expected
                or attn_cache.nbytes != batch * attn_cache.capacity * expected):
            raise RuntimeError(
                f"layer {self.layer_idx}: attn cache holds {attn_cache.bytes_per_token} bytes per "
                f"token, expected (kv_lora_rank + qk_rope_head_dim) x dtype size = {expected}")
        slot.start(attn_cache, batch, dtype)

    def _check_continuation(self, slot: LatentCacheLayer, batch: int, new: int) -> None:
        attn_cache = slot.attn_cache
        if batch != slot.batch:
            raise ValueError(
                f"layer {self.layer_idx}: batch {batch} given to a cache holding {slot.batch} "
                "sequences (beam search and re-batching are not supported)")
        lengths = attn_cache.lengths
        if not (lengths == slot.length).all():
            raise ValueError(
                f"layer {self.layer_idx}: attn's latent cache holds {lengths.tolist()} tokens, "
                f"transformers' cache {slot.length}: the cache was changed outside the model")
        if slot.length + new > attn_cache.capacity:
            raise ValueError(
                f"layer {self.layer_idx}: attn's latent cache is full ({slot.length} of "
                f"{attn_cache.capacity} tokens, {new} more asked for); it does not grow: pass "
                "use_latent_cache(capacity=...) or generate with max_new_tokens")

    def extra_repr(self) -> str:
        return (f"layer_idx={self.layer_idx}, mla='{self._options.mla}', "
                f"cache_dtype='{self._options.dtype}'")


# ---------------------------------------------------------------------------------------------
# Building attn layers from the HF modules


def _module_weights(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The HF module's tensors under attn's short names (refusing what attn cannot express)."""
    idx = module.layer_idx
    linears = ["kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    norms = ["kv_a_layernorm"]
    if module.q_lora_rank is None:
        linears.insert(0, "q_proj")
    else:
        linears[:0] = ["q_a_proj", "q_b_proj"]
        norms.insert(0, "q_a_layernorm")
    weights: Dict[str, torch.Tensor] = {}
    for name in linears:
        linear = getattr(module, name)
        if getattr(linear, "bias", None) is not None:
            raise ValueError(
                f"layer {idx}: {name} has a bias (attention_bias=True); attn's MLA projections "
                "are bias-free")
        weights[f"{name}.weight"] = linear.weight
    for name in norms:
        norm = getattr(module, name)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if eps != _LATENT_NORM_EPS:
            raise ValueError(
                f"layer {idx}: {name} has eps {eps}; attn's latent RMSNorms use {_LATENT_NORM_EPS}")
        weights[f"{name}.weight"] = norm.weight
    for name, tensor in weights.items():
        if tensor.device.type != "cpu":
            raise ValueError(f"layer {idx}: {name} is on {tensor.device}; attn runs on the CPU")
        if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"layer {idx}: {name} is {tensor.dtype}; attn takes float32, bfloat16 or "
                "float16 weights")
    return weights


def _build_layer(config: Dict[str, Any], module: torch.nn.Module,
                 weights: Dict[str, torch.Tensor]) -> attn.Attention:
    idx = module.layer_idx
    matrices = [t for name, t in weights.items() if "layernorm" not in name]
    if all(t.dtype == torch.float32 for t in matrices):
        # The binding converts a dict into the layer's own float32 tensors (one copy).
        return attn.Attention.from_config(config, {k: v.detach() for k, v in weights.items()},
                                          layer=idx)
    # bf16/f16: through a safetensors file that attn maps in the stored dtype; unlinked at once
    # (the mapping stays valid).
    from safetensors.torch import save_file

    prefix = f"model.layers.{idx}.self_attn."
    tensors = {prefix + k: v.detach().contiguous() for k, v in weights.items()}
    handle, path = tempfile.mkstemp(prefix=f"attn-layer{idx}-", suffix=".safetensors")
    os.close(handle)
    try:
        save_file(tensors, path)
        return attn.Attention.from_config(config, path, layer=idx)
    finally:
        os.unlink(path)


# ---------------------------------------------------------------------------------------------
# The swap


class LatentCacheHandle:
    """What :func:`use_latent_cache` returns: the swapped modules, ``undo()`` and ``redo()``.

    Also a context manager (``with use_latent_cache(model): ...`` undoes on exit).
    ``undo()`` puts transformers' modules back (the attn layers are kept); ``redo()`` swaps the
    same attn layers in again without rebuilding them (e.g. to compare both step by step).
    Caches made while the swap was active belong to it: the original modules refuse them.
    """

    def __init__(self, model: torch.nn.Module, options: _Options,
                 swaps: List[Tuple[torch.nn.Module, str, torch.nn.Module, AttnMLAAttention]]):
        self.model = model
        self._options = options
        self._swaps = swaps
        self._hooks: List[Any] = []
        self._wrapped_generate = False
        self.active = False

    @property
    def modules(self) -> List[AttnMLAAttention]:
        return [swap[3] for swap in self._swaps]

    @property
    def dtype(self) -> str:
        return self._options.dtype

    @property
    def mla(self) -> str:
        return self._options.mla

    @property
    def capacity(self) -> Optional[int]:
        return self._options.capacity

    def bytes_per_token(self) -> List[int]:
        """Cache bytes per token of each swapped layer: (kv_lora_rank + qk_rope_head_dim) × size."""
        return [module.latent_bytes_per_token for module in self.modules]

    def _install(self) -> None:
        model, options = self.model, self._options
        for parent, child, _, replacement in self._swaps:
            setattr(parent, child, replacement)
        model._attn_latent_handle = self

        def refuse_unsupported(_module: torch.nn.Module, args: Tuple[Any, ...],
                               kwargs: Dict[str, Any]) -> None:
            model_config = getattr(model, "config", None)
            if kwargs.get("output_attentions") or getattr(model_config, "output_attentions",
                                                          False):
                raise ValueError("output_attentions is not supported with attn's latent cache")
            if kwargs.get("block_sequence_ids") is not None:
                raise ValueError("packed sequences (block_sequence_ids) are not supported with "
                                 "attn's latent cache")

        self._hooks = [model.register_forward_pre_hook(refuse_unsupported, with_kwargs=True)]
        generate = getattr(model, "generate", None)
        if callable(generate):
            def generate_with_latent_cache(*args: Any, **kwargs: Any) -> Any:
                _check_generate(model, args, kwargs)
                with options.generating(_generate_capacity(model, args, kwargs)):
                    return generate(*args, **kwargs)

            generate_with_latent_cache.__doc__ = generate.__doc__
            model.generate = generate_with_latent_cache
            self._wrapped_generate = True
        self.active = True

    def undo(self) -> torch.nn.Module:
        """Puts the original attention modules back; returns the model. Idempotent."""
        if not self.active:
            return self.model
        for parent, name, original, _ in self._swaps:
            setattr(parent, name, original)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._wrapped_generate and "generate" in vars(self.model):
            del self.model.generate
        self._wrapped_generate = False
        if getattr(self.model, "_attn_latent_handle", None) is self:
            del self.model._attn_latent_handle
        self.active = False
        return self.model

    def redo(self) -> torch.nn.Module:
        """Swaps the attn layers in again after undo(); returns the model. Idempotent."""
        if self.active:
            return self.model
        if getattr(self.model, "_attn_latent_handle", None) is not None:
            raise ValueError("model: another use_latent_cache is active on it")
        for parent, name, original, _ in self._swaps:
            if getattr(parent, name) is not original:
                raise ValueError(f"model: '{name}' was replaced since undo(); not swapping back")
        self._install()
        return self.model

    def __enter__(self) -> "LatentCacheHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()

    def __repr__(self) -> str:
        return (f"LatentCacheHandle({len(self._swaps)} layers, mla='{self.mla}', "
                f"dtype='{self.dtype}', capacity={self.capacity}, active={self.active})")


def _generate_capacity(model: torch.nn.Module, args: Tuple[Any, ...],
                       kwargs: Dict[str, Any]) -> Optional[int]:
    config = kwargs.get("generation_config")
    if config is None and len(args) > 1:
        config = args[1]
    if config is None:
        config = getattr(model, "generation_config", None)
    inputs = args[0] if args else None
    for key in ("inputs", "input_ids", "inputs_embeds"):
        if inputs is None:
            inputs = kwargs.get(key)
    prompt = int(inputs.shape[1]) if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2 else 1
    max_new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if max_new is not None:
        return prompt + int(max_new)
    max_length = kwargs.get("max_length", getattr(config, "max_length", None))
    if max_length is not None:
        return prompt + int(max_length)
    return None


def _check_generate(model: torch.nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    config = kwargs.get("generation_config")
    if config is None and len(args) > 1:
        config = args[1]
    if config is None:
        config = getattr(model, "generation_config", None)

    def setting(name: str, default: Any = None) -> Any:
        return kwargs.get(name, getattr(config, name, default))

    if (setting("num_beams", 1) or 1) > 1:
        raise ValueError(
            "beam search (num_beams > 1) is not supported with attn's latent cache: it reorders "
            "the cache, which attn's cannot do; use num_beams=1 or undo() first")
    if kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens"):
        raise ValueError(
            "assisted / prompt-lookup decoding crops the cache, which attn's latent cache cannot "
            "do; undo() first")
    if setting("output_attentions", False):
        raise ValueError("output_attentions is not supported with attn's latent cache")
    implementation = setting("cache_implementation")
    if implementation not in (None, "dynamic"):
        raise ValueError(
            f"cache_implementation={implementation!r}: attn's latent cache replaces the layers of "
            "a DynamicCache only")


def use_latent_cache(model: torch.nn.Module, dtype: Any = None, mla: str = "auto",
                     capacity: Optional[int] = None) -> LatentCacheHandle:
    """Runs each DeepSeek-V2/V3 MLA attention of `model` on attn's layer over its latent cache.

    model: a transformers DeepSeek-V2/V3 model (``DeepseekV3ForCausalLM``, ``DeepseekV3Model``,
        ``DeepseekV2ForCausalLM``, …) on the CPU; modified in place.
    dtype: the cache's storage, ``'f32'``, ``'f16'``, ``'bf16'`` or a torch dtype; None: the
        model's dtype (float32 → ``'f32'``, bfloat16 → ``'bf16'``, float16 → ``'f16'``).
    mla: ``'auto'`` (per call the cheaper of absorbed and decompress-then-attend; decode steps
        run absorbed) or ``'absorbed'``. Both cache ``kv_lora_rank + qk_rope_head_dim`` values per
        token and layer.
    capacity: tokens per sequence each attn cache holds; None: from ``generate()`` (prompt +
        ``max_new_tokens``, or + ``max_length``), or the first call's length + 1024 outside it.

    Returns a :class:`LatentCacheHandle` (``undo()`` puts the original modules back,
    ``redo()`` the attn ones again).
    Raises ValueError for a model without these MLA modules and for what attn cannot do (module
    docstring).
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "_attn_latent_handle", None) is not None:
        raise ValueError("model: use_latent_cache is already active on it (undo() the handle first)")
    if mla not in _LATENT_FORMS:
        raise ValueError(
            f"mla: expected 'auto' or 'absorbed' (the latent-cache forms), got {mla!r}")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool)
                                 or capacity <= 0):
        raise ValueError(f"capacity: expected None or a positive int, got {capacity!r}")
    classes = _mla_classes()
    found = [(name, module) for name, module in model.named_modules()
             if type(module) in classes]
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"model: no DeepSeek-V2/V3 MLA attention modules (DeepseekV3Attention, "
            f"DeepseekV2Attention) in this '{model_type}' model"
            + (f" (its attention modules: {', '.join(kinds)})" if kinds else ""))
    parameters = list(model.parameters())
    for parameter in parameters:
        if parameter.device.type != "cpu":
            raise ValueError(f"model: attn runs on the CPU, a parameter is on {parameter.device}")
    model_dtype = found[0][1].kv_b_proj.weight.dtype
    options = _Options(_storage_dtype(dtype, model_dtype), mla, capacity)

    config = found[0][1].config.to_dict()
    modules = dict(model.named_modules())
    swaps = []
    for name, module in found:
        weights = _module_weights(module)
        layer = _build_layer(config, module, weights)
        scale = layer.config["softmax_scale"]
        if abs(scale - module.scaling) > 1e-6 * abs(module.scaling):
            raise ValueError(
                f"layer {module.layer_idx}: transformers scales scores by {module.scaling}, attn "
                f"by {scale} (its rope config is read differently); not swapped")
        replacement = AttnMLAAttention(module, layer, options, weights)
        parent_name, _, child = name.rpartition(".")
        swaps.append((modules[parent_name] if parent_name else model, child, module, replacement))
    handle = LatentCacheHandle(model, options, swaps)
    handle._install()
    return handle
