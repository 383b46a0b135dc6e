# SPDX-License-Identifier: Apache-2.0
"""attn as an attention implementation for Hugging Face transformers (5.x).

    import attn.hf
    attn.hf.register()                       # once per process; idempotent
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="attn")

``register(name)`` adds two functions under ``name``:

* an attention function (``transformers.AttentionInterface``) that runs attn's kernel
  (``torch.ops.attn.attention``) on the query, key and value the model's attention module
  computed, and
* a mask function (``transformers.masking_utils.AttentionMaskInterface``) that builds no
  ``[Sq, T]`` mask at all: it returns the ``[B, T]`` key-padding mask (True = a real key)
  carrying, as a Python attribute, what the kernel needs to reproduce the mask transformers
  would have built: causal or not, the sliding window, and the slot of the first query
  within the keys (``q_offset - kv_offset``; bottom-right for a ``DynamicCache``, not for a
  ``StaticCache``).

Mapping of transformers' arguments (docs/python.md has the long form):

* ``causal_mask_function`` -> causal; ``sliding_window_causal_mask_function(W)`` -> causal with
  ``window=W`` (transformers' overlay ``kv_idx > q_idx - W`` is attn's ``p - W < t``; the
  ``sliding_window`` the models pass is the same W, FlashAttention's ``(W - 1, W - 1)``);
  ``bidirectional_mask_function`` -> not causal. The window and causality come from the mask
  function (what eager/sdpa obey), not from the ``sliding_window`` / ``is_causal`` arguments,
  which are used only when the model passes no mask of ours.
* query slot: ``q_offset - kv_offset`` from the cache (``Cache.get_query_offset`` and
  ``get_mask_sizes``): DynamicCache (also its sliding-window layers, which keep W - 1 tokens)
  is bottom-right; StaticCache keeps a preallocated buffer, whose unwritten tail the causal
  rule hides.
* ``scaling`` -> ``scale``; ``softcap`` -> Gemma 2's logit soft-capping; ``s_aux`` -> GPT-OSS
  sinks (logit units); ``dropout`` must be 0.

What attn does not cover runs through transformers' own "sdpa" attention (or the model's eager
attention where sdpa would be wrong: soft-capping, sinks, ``output_attentions``), logging one
warning per reason on the ``attn.hf`` logger (``register(fallback=False)``: raise
``NotImplementedError`` instead):

* a model type not in ``SUPPORTED_MODEL_TYPES`` (its masks are then built as for "sdpa");
* a mask pattern other than the three above (chunked attention, packed sequences, image-token
  overlays, a user's 4D mask, bidirectional sliding windows);
* autograd (inputs that require grad in grad mode: attn's op has no backward; wrap inference in
  ``torch.no_grad()`` / ``torch.inference_mode()``) and dropout > 0;
* ``output_attentions=True`` (the model's eager attention returns the weights);
* tensors not on the CPU (CUDA, ...); ``position_bias`` (T5-style biases).

Meta tensors (shape inference) get an empty meta output of the right shape.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import torch

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "attention_forward",
    "attention_mask",
    "counts",
    "register",
    "reset_counts",
    "use_latent_cache",
]

logger = logging.getLogger("attn.hf")

# Model types whose attention modules hand transformers' attention functions exactly the
# tensors attn's kernel computes on (query [B, H, S, D], keys/values [B, G, T, D/Dv], GQA by
# head groups) and build their masks through masking_utils. Each is checked against eager in
# tests/python_torch/test_hf_backend.py.
SUPPORTED_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma2",
        "gemma3_text",
        "deepseek_v2",
        "deepseek_v3",
        "gpt_oss",
        "phi3",
        "olmo2",
        "granite",
    }
)

_INFO_ATTR = "_attn_hf_mask"
_lock = threading.Lock()
_warned: set = set()
_counts: collections.Counter = collections.Counter()
_settings = {"fallback": True}
_op_cache: Dict[str, Callable] = {}


class _MaskInfo:
    """What the mask function decided, carried on the [B, T] key mask it returns."""

    __slots__ = ("causal", "window", "query_offset", "q_length", "kv_length", "padded")

    def __init__(self, causal, window, query_offset, q_length, kv_length, padded):
        self.causal = causal
        self.window = window
        self.query_offset = query_offset
        self.q_length = q_length
        self.kv_length = kv_length
        self.padded = padded

    def __repr__(self):
        return (
            f"_MaskInfo(causal={self.causal}, window={self.window}, "
            f"query_offset={self.query_offset}, q_length={self.q_length}, "
            f"kv_length={self.kv_length}, padded={self.padded})"
        )


class _Unsupported(Exception):
    """A call attn does not run; .reason names it (one warning per reason)."""

    def __init__(self, reason: str, eager: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.eager = eager  # sdpa would be wrong too: use the model's eager attention


# ----------------------------------------------------------------------------------------------
# Registration


def register(name: str = "attn", *, fallback: bool = True) -> str:
    """Register attn with transformers under ``name`` (attention and mask functions).

    Idempotent: registering again (under any name) re-registers the same functions. With
    ``fallback=False`` the cases attn does not cover raise ``NotImplementedError`` instead of
    running transformers' sdpa/eager attention with one warning. Returns ``name``.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "attn.hf.register() needs transformers >= 5 (AttentionInterface and "
            f"masking_utils.AttentionMaskInterface): {e}"
        ) from e
    if not isinstance(name, str) or not name:
        raise ValueError(f"register(): name must be a non-empty string, got {name!r}")
    reserved = {"eager", "sdpa", "flex_attention", "paged|eager"}
    if name in reserved or name.startswith("flash_attention") or name.startswith("paged|"):
        raise ValueError(f"register(): {name!r} is one of transformers' own implementations")
    _settings["fallback"] = bool(fallback)
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, attention_mask)
    return name


def use_latent_cache(model, **kwargs):
    """Run the model's MLA attention in attn's absorbed form over attn's latent cache.

    A thin entry point: see ``attn.hf_latent.use_latent_cache`` for the arguments.
    """
    import importlib

    return importlib.import_module("attn.hf_latent").use_latent_cache(model, **kwargs)


def counts() -> Dict[str, int]:
    """Calls so far: ``"attn"`` (run by attn's kernel), ``"meta"`` and ``"fallback: REASON"``."""
    with _lock:
        return dict(_counts)


def reset_counts() -> None:
    with _lock:
        _counts.clear()


def _count(key: str) -> None:
    with _lock:
        _counts[key] += 1


def _warn_once(reason: str, what: str) -> None:
    with _lock:
        if reason in _warned:
            return
        _warned.add(reason)
    logger.warning("attn.hf: %s; %s (this warning is shown once)", reason, what)


# ----------------------------------------------------------------------------------------------
# The kernel


def _kernel() -> Callable:
    """torch.ops.attn.attention (importing attn.ops registers it)."""
    op = _op_cache.get("op")
    if op is None:
        import attn.ops  # noqa: F401

        op = _op_cache["op"] = torch.ops.attn.attention
    return op


# ----------------------------------------------------------------------------------------------
# The mask function


def _closure(fn) -> Dict[str, Any]:
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    cells = getattr(fn, "__closure__", None) or ()
    return {n: c.cell_contents for n, c in zip(names, cells)}


def _decode_mask_function(fn) -> Optional[Tuple[bool, int]]:
    """(causal, window) for the mask functions attn's kernel expresses; None otherwise."""
    from transformers import masking_utils as mu

    if fn is mu.causal_mask_function:
        return True, 0
    if fn is mu.bidirectional_mask_function:
        return False, 0
    if getattr(fn, "__module__", None) != mu.__name__:
        return None
    if getattr(fn, "__qualname__", "") == "and_masks.<locals>.and_mask":
        parts = _closure(fn).get("mask_functions")
        if not isinstance(parts, tuple):
            return None
        decoded = [_decode_part(p, mu) for p in parts]
        if any(d is None for d in decoded):
            return None
        causal, window = False, 0
        full = False
        for kind, w in decoded:
            if kind == "causal":
                causal = True
            elif kind == "window":
                if w <= 0 or (window and w != window):
                    return None
                window = w
            elif kind == "full":
                full = True
        if window and not causal:
            return None
        if not causal and not full:
            return None
        return causal, window
    return None


def _decode_part(fn, mu):
    if fn is mu.causal_mask_function:
        return "causal", 0
    if fn is mu.bidirectional_mask_function:
        return "full", 0
    if (
        getattr(fn, "__module__", None) == mu.__name__
        and getattr(fn, "__qualname__", "") == "sliding_window_overlay.<locals>.inner_mask"
    ):
        w = _closure(fn).get("sliding_window")
        if isinstance(w, int) and not isinstance(w, bool):
            return "window", w
    return None


def _model_type(config) -> Optional[str]:
    return getattr(config, "model_type", None) if config is not None else None


def attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Optional[Callable] = None,
    attention_mask: Optional[torch.Tensor] = None,
    **kwargs,
):
    """transformers mask function for attn: the [B, kv_length] key mask, no [Sq, T] mask.

    The returned bool tensor (True = a real key) carries the causality, window and first query
    slot as an attribute read by ``attention_forward``. Patterns attn does not express (and
    models attn does not cover) get transformers' sdpa mask instead, a 4D bool tensor, which
    ``attention_forward`` hands to the fallback.
    """
    from transformers import masking_utils as mu

    if mask_function is None:
        mask_function = mu.causal_mask_function
    # generate() with a compileable cache builds the masks before the forward, which builds them
    # again from what it is given: ours pass through.
    if isinstance(attention_mask, torch.Tensor):
        info = getattr(attention_mask, _INFO_ATTR, None)
        if info is not None:
            return attention_mask

    q_offset = int(q_offset)
    kv_offset = int(kv_offset)
    config = kwargs.get("config")
    decoded = _decode_mask_function(mask_function)
    supported = _model_type(config) in SUPPORTED_MODEL_TYPES
    if decoded is None or not supported:
        kw = {k: v for k, v in kwargs.items() if k != "allow_is_causal_skip"}
        return mu.sdpa_mask(
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            kv_offset=kv_offset,
            mask_function=mask_function,
            attention_mask=attention_mask,
            allow_is_causal_skip=False,
            **kw,
        )
    causal, window = decoded
    device = kwargs.get("device")
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"attn.hf: expected a 2D [batch, keys] attention mask, got {tuple(attention_mask.shape)}"
            )
        keep = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        keep = keep[:, kv_offset : kv_offset + kv_length].to(dtype=torch.bool)
        if keep.shape[0] != batch_size and keep.shape[0] == 1:
            keep = keep.expand(batch_size, -1)
        keep = keep.contiguous()
        padded = not bool(keep.all())
    else:
        keep = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
        padded = False
    # The cache hands the attention kv_length keys, the first being absolute slot kv_offset; the
    # queries are slots q_offset ... q_offset + q_length - 1.
    query_offset = q_offset - kv_offset
    if query_offset == kv_length - q_length:
        query_offset = -1  # bottom-right, the common case
    setattr(keep, _INFO_ATTR, _MaskInfo(causal, window, query_offset, q_length, kv_length, padded))
    return keep


# ----------------------------------------------------------------------------------------------
# The attention function


def _dense_mask(info: _MaskInfo, keep: Optional[torch.Tensor], b: int, sq: int, t: int, device):
    """The [B, 1, Sq, T] bool mask transformers would have built (for the fallbacks)."""
    qo = t - sq if info.query_offset < 0 else info.query_offset
    p = torch.arange(sq, device=device).view(sq, 1) + qo
    k = torch.arange(t, device=device).view(1, t)
    vis = torch.ones(sq, t, dtype=torch.bool, device=device)
    if info.causal:
        vis = vis & (k <= p)
        if info.window > 0:
            vis = vis & (k > p - info.window)
    vis = vis.view(1, 1, sq, t).expand(b, 1, sq, t)
    if keep is not None:
        vis = vis & keep.view(keep.shape[0], 1, 1, t).to(torch.bool)
    return vis


def _fallback(err: _Unsupported, module, query, key, value, mask, dropout, scaling, kwargs):
    if not _settings["fallback"]:
        raise NotImplementedError(
            f"attn.hf: {err.reason}. attn does not run this call; register(fallback=True) "
            "runs transformers' sdpa (or eager) attention instead"
        )
    _count("fallback: " + err.reason)
    use_eager = err.eager or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    if use_eager:
        _warn_once(err.reason, "running the model's eager attention for such calls")
        mod = sys.modules.get(type(module).__module__)
        eager = getattr(mod, "eager_attention_forward", None)
        if eager is None:
            raise NotImplementedError(
                f"attn.hf: {err.reason}, and {type(module).__name__}'s module has no "
                "eager_attention_forward to fall back to"
            )
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            mask = torch.where(mask, zero, torch.finfo(query.dtype).min)
        return eager(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    _warn_once(err.reason, "running transformers' sdpa attention for such calls")
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs = {k: v for k, v in kwargs.items() if k not in ("sliding_window", "softcap", "s_aux")}
    return sdpa_attention_forward(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs
    )


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    is_causal: Optional[bool] = None,
    s_aux: Optional[torch.Tensor] = None,
    **kwargs,
) -> Tuple[torch.Tensor, None]:
    """transformers attention function: query [B, H, Sq, D], key [B, G, T, D], value
    [B, G, T, Dv] -> ([B, Sq, H, Dv], None), computed by attn's kernel."""
    extra = dict(kwargs)
    if sliding_window is not None:
        extra["sliding_window"] = sliding_window
    if softcap is not None:
        extra["softcap"] = softcap
    if is_causal is not None:
        extra["is_causal"] = is_causal
    if s_aux is not None:
        extra["s_aux"] = s_aux
    try:
        plan = _plan(
            module, query, key, value, attention_mask, dropout, sliding_window, is_causal, s_aux, kwargs
        )
    except _Unsupported as err:
        mask = _fallback_mask(module, query, key, attention_mask, sliding_window, is_causal)
        return _fallback(err, module, query, key, value, mask, dropout, scaling, extra)

    if plan is None:  # meta tensors: shape only
        _count("meta")
        b, h, sq, _ = query.shape
        return query.new_empty(b, sq, h, value.shape[-1]), None

    keep, causal, query_offset, window = plan
    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    sinks = None
    if s_aux is not None:
        sinks = s_aux.detach().to(torch.float32)
    scale = None if scaling is None else float(scaling)
    out = _kernel()(
        q,
        k,
        v,
        keep,
        causal,
        query_offset,
        scale,
        window,
        float(softcap) if softcap else 0.0,
        sinks,
    )
    _count("attn")
    return out, None


def _fallback_mask(module, query, key, mask, sliding_window, is_causal):
    """The mask transformers' sdpa/eager attention needs for this call."""
    b, sq, t = query.shape[0], query.shape[2], key.shape[2]
    info = getattr(mask, _INFO_ATTR, None) if isinstance(mask, torch.Tensor) else None
    if info is not None:
        return _dense_mask(info, mask if info.padded else None, b, sq, t, query.device)
    if _model_type(getattr(module, "config", None)) not in SUPPORTED_MODEL_TYPES:
        return mask  # built by transformers' sdpa mask function: as sdpa expects it
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        info = _MaskInfo(_causal(module, is_causal), int(sliding_window or 0), -1, sq, t, False)
        if mask is None and not info.causal:
            return None
        keep = None if mask is None else (mask if mask.dtype == torch.bool else mask != 0)
        return _dense_mask(info, keep, b, sq, t, query.device)
    return mask


def _causal(module, is_causal) -> bool:
    return bool(is_causal) if is_causal is not None else bool(getattr(module, "is_causal", True))


def _plan(module, query, key, value, mask, dropout, sliding_window, is_causal, s_aux, kwargs):
    """(key_mask or None, causal, query_offset, window) for the kernel; None for meta tensors;
    raises _Unsupported for what attn does not run."""
    config = getattr(module, "config", None)
    model_type = _model_type(config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _Unsupported(f"model type {model_type!r} is not covered by attn's backend")
    devices = {t.device.type for t in (query, key, value)}
    if s_aux is not None:
        devices.add(s_aux.device.type)
    if devices == {"meta"}:
        return None
    if devices != {"cpu"}:
        raise _Unsupported(
            f"tensors on {'/'.join(sorted(devices))}: attn runs on the CPU"
        )
    if kwargs.get("output_attentions", False):
        raise _Unsupported("output_attentions=True (attn returns no attention weights)", eager=True)
    if kwargs.get("position_bias") is not None:
        raise _Unsupported("position_bias (additive attention biases)")
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (query, key, value, s_aux)
    ):
        raise _Unsupported(
            "autograd (inputs require grad in grad mode; attn's op has no backward: use "
            "torch.no_grad() or torch.inference_mode() for inference)"
        )
    if dropout and float(dropout) > 0.0:
        raise _Unsupported(f"attention dropout {dropout} (training)")
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise _Unsupported("query/key/value not 4D [B, heads, tokens, dim]")
    b, h, sq, d = query.shape
    bk, g, t, dk = key.shape
    if bk != b or value.shape[0] != b or value.shape[1] != g or value.shape[2] != t or dk != d:
        raise _Unsupported(
            f"shapes query {tuple(query.shape)}, key {tuple(key.shape)}, value "
            f"{tuple(value.shape)} (self-attention with grouped heads expected)"
        )
    if g == 0 or h % g != 0:
        raise _Unsupported(f"{h} query heads over {g} kv heads")

    info = None
    if mask is None:
        keep = None
        causal = _causal(module, is_causal)
        window = int(sliding_window or 0)
        query_offset = -1
        if window and not causal:
            raise _Unsupported("a bidirectional sliding window")
    elif isinstance(mask, torch.Tensor) and getattr(mask, _INFO_ATTR, None) is not None:
        info = getattr(mask, _INFO_ATTR)
        if mask.shape != (b, t) and not (mask.dim() == 2 and mask.shape[1] == t and mask.shape[0] == 1):
            raise _Unsupported(
                f"a key mask of shape {tuple(mask.shape)} for {b} sequences of {t} keys"
            )
        keep = mask if info.padded else None
        causal = info.causal
        window = info.window
        query_offset = info.query_offset
        if query_offset < 0 and info.q_length != sq:
            raise _Unsupported(f"a mask built for {info.q_length} queries used with {sq}")
    elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
        # A [B, T] key-padding mask from elsewhere (FlashAttention style): bottom-right.
        if mask.shape[1] != t or mask.shape[0] not in (1, b):
            raise _Unsupported(f"a 2D mask of shape {tuple(mask.shape)} for {b} x {t} keys")
        keep = mask if mask.dtype == torch.bool else mask != 0
        causal = _causal(module, is_causal)
        window = int(sliding_window or 0)
        query_offset = -1
        if window and not causal:
            raise _Unsupported("a bidirectional sliding window")
    elif isinstance(mask, torch.Tensor) and mask.dim() == 4:
        raise _Unsupported("a 4D attention mask (a pattern attn's kernel does not express)")
    else:
        raise _Unsupported(f"an attention mask of type {type(mask).__name__}")

    if keep is not None and keep.shape[0] != b:
        keep = keep.expand(b, t)
    if causal:
        qo = t - sq if query_offset < 0 else query_offset
        if qo < 0 or qo + sq > t:
            raise _Unsupported(f"causal attention of {sq} queries from slot {qo} over {t} keys")
    elif window:
        raise _Unsupported("a bidirectional sliding window")
    if window < 0:
        raise _Unsupported(f"sliding window {window}")
    return keep, causal, query_offset, window
