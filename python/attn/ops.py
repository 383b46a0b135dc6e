# SPDX-License-Identifier: Apache-2.0
"""attn's kernels as PyTorch operators, and an SDPA-compatible entry point.

Importing this module (``import attn.ops``, or the first use of ``attn.ops`` /
``attn.scaled_dot_product_attention``: ``import attn`` alone never imports torch) registers
three custom operators in the namespace ``attn`` with ``torch.library.custom_op``, each with a
fake (meta) implementation, so that ``torch.compile(fullgraph=True)`` traces through them
without graph breaks and meta/fake tensors get the right output shapes:

``torch.ops.attn.attention(q, k, v, key_mask=None, causal=False, query_offset=-1, scale=None,
window=0, softcap=0.0, sinks=None) -> Tensor``
    attn's native layout: ``q [B, Sq, H, D]``, ``k [B, T, G, D]``, ``v [B, T, G, Dv]`` (H a
    multiple of G; query head h reads kv head h // (H/G)) -> ``[B, Sq, H, Dv]``.

``torch.ops.attn.mla_attention(q, kv, value_dim, key_mask=None, causal=False, query_offset=-1,
scale=None) -> Tensor``
    absorbed MLA: ``q [B, Sq, H, D]``, latent rows ``kv [B, T, D]`` whose first ``value_dim``
    entries are the value -> ``[B, Sq, H, value_dim]``.

``torch.ops.attn.sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False)
-> Tensor``
    torch's layout and semantics (``torch.nn.functional.scaled_dot_product_attention``):
    ``[B, H, S, D]`` -> ``[B, H, Sq, Dv]``; the mask is analysed inside the operator (opaque to
    the compiler). ``scaled_dot_product_attention`` below is its Python face.

Visibility (docs/semantics.md §1): query s sits at key slot ``p = query_offset + s``
(``query_offset = -1``: ``T - Sq``, bottom-right aligned as in decode and flash-attn; ``0``:
top-left, torch's ``is_causal``). With ``causal`` it sees key t iff ``t <= p``; with
``window = W > 0`` also ``t > p - W`` (the W keys ``p - W + 1 … p``: Mistral's
``sliding_window``, a key is visible while it lies fewer than W slots back); ``key_mask[b, t] ==
0`` hides key t from every query. Query slots past the last key (``p >= T``, e.g. top-left
causal with Sq > T) see every key, as in torch; with a window that is an error. A query that
sees no key gets an all-zero output row (torch's SDPA on the CPU returns zeros there too).

Dtypes: q, k, v float32, float16 or bfloat16, all the same; the kernel computes in float32 and
the output has the input's dtype (float64 is refused: attn would silently compute it in float32).
A NaN or Inf in q, in the keys and values the kernel reads, or in the output is a ValueError
naming its index (torch's SDPA would propagate NaN).
Not supported, with a clear error: autograd (attn has no backward: inputs that require grad
while grad mode is on raise RuntimeError; run under ``torch.no_grad()`` or
``torch.inference_mode()``), dropout, non-CPU tensors at run time (the fake kernels accept any
device, so tracing works), and masks that are not key padding + causal + sliding window
(``NotImplementedError``).
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import torch
from torch import Tensor

from attn import _attn

__all__ = ["attention", "mla_attention", "sdpa", "scaled_dot_product_attention"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Checks shared by the real and the fake kernels (the fake ones run at trace time, so a compiled
# graph fails where the eager call would).


def _check_dtypes(where: str, **tensors: Tensor) -> torch.dtype:
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if first.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{where}: {names[0]} must be float32, float16 or bfloat16, got {first.dtype}"
            + (" (attn computes in float32; cast to float32)"
               if first.dtype == torch.float64 else ""))
    for name in names[1:]:
        if tensors[name].dtype != first.dtype:
            raise TypeError(
                f"{where}: {', '.join(names)} must have the same dtype, got "
                + ", ".join(f"{n} {tensors[n].dtype}" for n in names))
    return first.dtype


def _check_rank(where: str, t: Tensor, name: str, layout: str) -> None:
    if t.dim() != len(layout.split(",")):
        raise ValueError(f"{where}: {name} must be {layout}, got shape {list(t.shape)}")


def _require_cpu(where: str, **tensors: Optional[Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and t.device.type != "cpu":
            raise RuntimeError(
                f"{where}: attn runs on the CPU; got a {t.device.type} tensor for {name} "
                f"(move it with .cpu(); meta and fake tensors are only for tracing)")


def _check_key_mask(where: str, key_mask: Optional[Tensor], batch, length) -> None:
    if key_mask is None:
        return
    if key_mask.dim() != 2 or key_mask.shape[0] != batch or key_mask.shape[1] != length:
        raise ValueError(f"{where}: key_mask must be [B, T] = [{batch}, {length}], "
                         f"got shape {list(key_mask.shape)}")
    if key_mask.dtype.is_complex:
        raise TypeError(f"{where}: key_mask must be bool, integer or float (1 keep / 0 pad), "
                        f"got {key_mask.dtype}")


def _check_options(where: str, causal: bool, query_offset: int, scale: Optional[float],
                   window: int, softcap: float) -> None:
    if query_offset < -1:
        raise ValueError(f"{where}: query_offset must be >= 0 (the slot of query 0) or -1 "
                         f"(T - Sq, bottom-right aligned), got {query_offset}")
    if window < 0:
        raise ValueError(f"{where}: window must be >= 0 (0: none), got {window}")
    if window > 0 and not causal:
        raise ValueError(f"{where}: window requires causal=True (a window is counted back "
                         f"from each query's slot)")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: scale must be a finite positive number, got {scale}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"{where}: softcap must be a finite number >= 0 (0: none), "
                         f"got {softcap}")


def _check_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor], causal: bool,
                     query_offset: int, scale: Optional[float], window: int, softcap: float,
                     sinks: Optional[Tensor]) -> None:
    where = "attn.ops.attention"
    _check_dtypes(where, q=q, k=k, v=v)
    _check_rank(where, q, "q", "[B, Sq, H, D]")
    _check_rank(where, k, "k", "[B, T, G, D]")
    _check_rank(where, v, "v", "[B, T, G, Dv]")
    batch, _, heads, dim = q.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"{where}: batch sizes differ: q {list(q.shape)}, k {list(k.shape)}, "
                         f"v {list(v.shape)}")
    if k.shape[3] != dim:
        raise ValueError(f"{where}: head dims of q ({dim}) and k ({k.shape[3]}) differ")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"{where}: v {list(v.shape)} must match k {list(k.shape)} in T and G")
    kv_heads = k.shape[2]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"{where}: q heads ({heads}) must be a multiple of kv heads "
                         f"({kv_heads})")
    _check_key_mask(where, key_mask, batch, k.shape[1])
    if sinks is not None and (sinks.dim() != 1 or sinks.shape[0] != heads
                              or not sinks.dtype.is_floating_point):
        raise ValueError(f"{where}: sinks must be [H] = [{heads}] floats, got "
                         f"{sinks.dtype} {list(sinks.shape)}")
    _check_options(where, causal, query_offset, scale, window, softcap)
    if causal and window > 0 and query_offset >= 0 and query_offset + q.shape[1] > k.shape[1]:
        raise ValueError(f"{where}: a sliding window with query slots past the last key is not "
                         f"supported (query_offset {query_offset} + Sq {q.shape[1]} > T "
                         f"{k.shape[1]})")


def _check_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], is_causal: bool,
                scale: Optional[float], enable_gqa: bool) -> tuple:
    """Validates torch-layout inputs; returns (B, Bq, Bk, H, G, Sq, T, D, Dv)."""
    where = "attn.scaled_dot_product_attention"
    dtype = _check_dtypes(where, query=q, key=k, value=v)
    for name, t in (("query", q), ("key", k), ("value", v)):
        _check_rank(where, t, name, "[B, H, S, D]")
    bq, heads, _, dim = q.shape
    bk, kv_heads, length, _ = k.shape
    if k.shape[3] != dim:
        raise ValueError(f"{where}: query and key head dims differ: {dim} and {k.shape[3]}")
    if v.shape[0] != bk or v.shape[1] != kv_heads or v.shape[2] != length:
        raise ValueError(f"{where}: value {list(v.shape)} must match key {list(k.shape)} in "
                         f"batch, heads and length")
    if bq != bk and bq != 1 and bk != 1:
        raise ValueError(f"{where}: batch sizes of query ({bq}) and key/value ({bk}) neither "
                         f"match nor broadcast")
    batch = bk if bq == 1 else bq
    if kv_heads != heads and kv_heads != 1:
        if not enable_gqa:
            raise ValueError(f"{where}: query has {heads} heads and key/value {kv_heads}: "
                             f"pass enable_gqa=True for grouped-query attention")
        if kv_heads == 0 or heads % kv_heads != 0:
            raise ValueError(f"{where}: the number of heads in key/value ({kv_heads}) must "
                             f"divide the number of heads in query ({heads})")
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{where}: an explicit attn_mask should not be set when "
                             f"is_causal=True (as in torch)")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != torch.float32 \
                and attn_mask.dtype != dtype:
            raise TypeError(f"{where}: attn_mask must be bool or float (float32 or the query's "
                            f"dtype {dtype}), got {attn_mask.dtype}")
        if not 2 <= attn_mask.dim() <= 4:
            raise ValueError(f"{where}: attn_mask must have 2 to 4 dimensions, broadcastable "
                             f"to [B, H, Sq, T], got shape {list(attn_mask.shape)}")
        full = (batch, heads, q.shape[2], length)
        shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
        for axis in range(4):
            if shape[axis] != 1 and shape[axis] != full[axis]:
                raise ValueError(f"{where}: attn_mask of shape {list(attn_mask.shape)} does not "
                                 f"broadcast to [B, H, Sq, T] = {list(full)}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: scale must be a finite positive number, got {scale} "
                         f"(torch accepts any float; attn does not)")
    return batch, bq, bk, heads, kv_heads, q.shape[2], length, dim, v.shape[3]


# ---------------------------------------------------------------------------------------------
# Running the kernel for any query offset (the binding takes slots [0, T - Sq] only).


# Per-thread float32 buffers for what a call converts and then drops: the queries of a
# half-precision call and its float32 output before the cast back. A fresh buffer of a prefill's
# size costs more in page faults than the copy itself (S = 2048, H = 32, D = 128: 12 ms to
# allocate and convert the queries, 1.2 ms to convert into a buffer already mapped); the buffers
# grow to the largest call a thread has made and are kept.
_workspace = threading.local()


def _scratch(slot: str, shape) -> Tensor:
    """A float32 tensor of `shape` over this thread's buffer `slot` (contents undefined)."""
    count = math.prod(shape)
    buffer = getattr(_workspace, slot, None)
    if buffer is None or buffer.numel() < count:
        buffer = torch.empty(count, dtype=torch.float32)
        setattr(_workspace, slot, buffer)
    return buffer[:count].view(shape)


def _queries_f32(q: Tensor) -> Tensor:
    """q [B, Sq, H, D] as the kernel reads it in place (float32, each batch row row-major):
    itself when it is, else one torch copy into this thread's query buffer (vectorised; the
    binding's own conversion walks element by element)."""
    expected = 1
    for axis in (3, 2, 1):
        if q.shape[axis] != 1 and q.stride(axis) != expected:
            break
        expected *= q.shape[axis]
    else:
        if q.dtype == torch.float32:
            return q
    return _scratch("queries", q.shape).copy_(q)


def _attend(q: Tensor, k: Tensor, v: Tensor, keep: Optional[Tensor], causal: bool, offset: int,
            scale: Optional[float], window: int, softcap: float,
            sinks: Optional[Tensor]) -> Tensor:
    """float32 [B, Sq, H, Dv] for q [B, Sq, H, D], k [B, T, G, D], v [B, T, G, Dv] with query s
    at slot offset + s (any integer). Rows whose slot is < 0 see no key (zeros); rows whose slot
    is >= T see every kept key (an error with a window)."""
    batch, queries, heads, _ = q.shape
    length, value_dim = k.shape[1], v.shape[3]
    # check_finite: a NaN/Inf in q, in the keys and values read, or in the output is a
    # ValueError naming it (torch would let NaN through; attn's kernels leave the output for
    # non-finite inputs unspecified, so it is refused rather than computed). q and the output
    # are scanned at memory speed; K/V are vouched for by the kernel as it reads them.
    kw = dict(scale=scale, attention_mask=keep, check_finite=True, softcap=softcap,
              sinks=sinks)
    if queries == 0 or length == 0:
        return torch.zeros(batch, queries, heads, value_dim)
    # A half-precision call is cast to a new tensor afterwards: its float32 output can live in
    # this thread's buffer. A float32 call returns the output itself: a new tensor.
    shape = (batch, queries, heads, value_dim)
    out = torch.empty(shape) if q.dtype == torch.float32 else _scratch("output", shape)
    q = _queries_f32(q)
    if not causal:
        _attn.attention(q, k, v, causal=False, out=out, **kw)
        return out
    first = min(max(-offset, 0), queries)  # rows [0, first): slot < 0, no key visible
    last = min(max(length - offset, 0), queries)  # rows [last, Sq): slot >= T
    if last < queries and window > 0:
        raise ValueError(f"attn: a sliding window with query slots past the last key (slot "
                         f"{offset + queries - 1} >= T = {length}) is not supported")
    if first == 0 and last == queries:
        _attn.attention(q, k, v, causal=True, query_offset=offset, window=window, out=out, **kw)
        return out
    out.zero_()
    if first < last:
        out[:, first:last] = _attn.attention(q[:, first:last], k, v, causal=True,
                                             query_offset=offset + first, window=window, **kw)
    if last < queries:
        out[:, last:] = _attn.attention(q[:, last:], k, v, causal=False, **kw)
    return out


# ---------------------------------------------------------------------------------------------
# torch.ops.attn.attention


@torch.library.custom_op("attn::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None,
              causal: bool = False, query_offset: int = -1, scale: Optional[float] = None,
              window: int = 0, softcap: float = 0.0, sinks: Optional[Tensor] = None) -> Tensor:
    """attn's attention kernel in its native layout, as a torch operator.

    q [B, Sq, H, D], k [B, T, G, D], v [B, T, G, Dv] (float32/float16/bfloat16, one dtype; H a
    multiple of G) -> [B, Sq, H, Dv] in q's dtype. key_mask: [B, T] 1 keep / 0 pad (bool,
    integer or float). causal: query s at slot p = query_offset + s (-1: T - Sq, bottom-right)
    sees keys t <= p (slots p >= T see every key); window W > 0 (needs causal): also t > p - W.
    scale: default 1/sqrt(D). softcap > 0: Gemma-2 logit soft-capping. sinks: [H] GPT-OSS
    attention-sink logits. See the module docstring.
    """
    _check_attention(q, k, v, key_mask, causal, query_offset, scale, window, softcap, sinks)
    _require_cpu("attn.ops.attention", q=q, k=k, v=v, key_mask=key_mask, sinks=sinks)
    offset = k.shape[1] - q.shape[1] if query_offset == -1 else query_offset
    out = _attend(q, k, v, key_mask, causal, offset, scale, window, softcap, sinks)
    return out if q.dtype == torch.float32 else out.to(q.dtype)


@attention.register_fake
def _(q, k, v, key_mask=None, causal=False, query_offset=-1, scale=None, window=0, softcap=0.0,
      sinks=None):
    _check_attention(q, k, v, key_mask, causal, query_offset, scale, window, softcap, sinks)
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


# ---------------------------------------------------------------------------------------------
# torch.ops.attn.mla_attention


def _check_mla(q: Tensor, kv: Tensor, value_dim: int, key_mask: Optional[Tensor], causal: bool,
               query_offset: int, scale: Optional[float]) -> None:
    where = "attn.ops.mla_attention"
    _check_dtypes(where, q=q, kv=kv)
    _check_rank(where, q, "q", "[B, Sq, H, D]")
    _check_rank(where, kv, "kv", "[B, T, D]")
    if kv.shape[0] != q.shape[0] or kv.shape[2] != q.shape[3]:
        raise ValueError(f"{where}: kv {list(kv.shape)} must be [B, T, D] for q "
                         f"{list(q.shape)}")
    if not 1 <= value_dim <= kv.shape[2]:
        raise ValueError(f"{where}: value_dim must lie in [1, {kv.shape[2]}], got {value_dim}")
    _check_key_mask(where, key_mask, q.shape[0], kv.shape[1])
    _check_options(where, causal, query_offset, scale, 0, 0.0)


@torch.library.custom_op("attn::mla_attention", mutates_args=())
def mla_attention(q: Tensor, kv: Tensor, value_dim: int, key_mask: Optional[Tensor] = None,
                  causal: bool = False, query_offset: int = -1,
                  scale: Optional[float] = None) -> Tensor:
    """Absorbed MLA (attn.mla_attention) as a torch operator: q [B, Sq, H, D] (absorbed
    queries), kv [B, T, D] latent rows (c_kv | rotated k_pe), value = kv[..., :value_dim] ->
    [B, Sq, H, value_dim] in q's dtype. key_mask, causal, query_offset as in attention; scale
    default 1/sqrt(D) (DeepSeek's is (dn + dr)^-0.5 * mscale^2: pass it)."""
    _check_mla(q, kv, value_dim, key_mask, causal, query_offset, scale)
    _require_cpu("attn.ops.mla_attention", q=q, kv=kv, key_mask=key_mask)
    k = kv.unsqueeze(2)
    out = _attend(q, k, k[..., :value_dim], key_mask, causal,
                  kv.shape[1] - q.shape[1] if query_offset == -1 else query_offset, scale, 0,
                  0.0, None)
    return out if q.dtype == torch.float32 else out.to(q.dtype)


@mla_attention.register_fake
def _(q, kv, value_dim, key_mask=None, causal=False, query_offset=-1, scale=None):
    _check_mla(q, kv, value_dim, key_mask, causal, query_offset, scale)
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], value_dim))


# ---------------------------------------------------------------------------------------------
# torch.ops.attn.sdpa: mask analysis


def _not_expressible(why: str) -> NotImplementedError:
    return NotImplementedError(
        "attn.scaled_dot_product_attention: this attn_mask is not expressible as key padding + "
        "causal + sliding window: " + why)


def _analyse_mask(mask: Tensor, length: int):
    """(keep [Bm, T] uint8 array or None, causal, offset, window, zero_rows [Bm, Sq] uint8 array
    or None) whose visibility is exactly `mask` (True / 0.0 = attend) on every query row that
    sees some key; rows that see none are zero_rows (to be zeroed after the kernel) where the
    pattern would show them keys. NotImplementedError when no such pattern exists. Bm is 1 or
    B. The search and the exact check are attn._attn._sdpa_mask_visibility (C++, two passes
    over the mask: torch's boolean reductions take ~25x longer)."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    keep, causal, offset, window, zero_rows, problem = _attn._sdpa_mask_visibility(mask, length)
    if problem is not None:
        raise _not_expressible(problem)
    return keep, causal, offset, window, zero_rows


# ---------------------------------------------------------------------------------------------
# torch.ops.attn.sdpa


@torch.library.custom_op("attn::sdpa", mutates_args=())
def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
         is_causal: bool = False, scale: Optional[float] = None,
         enable_gqa: bool = False) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention on [B, H, S, D] (no dropout) as a torch
    operator computed by attn; see scaled_dot_product_attention."""
    batch, bq, bk, heads, _, queries, length, _, value_dim = _check_sdpa(
        q, k, v, attn_mask, is_causal, scale, enable_gqa)
    _require_cpu("attn.scaled_dot_product_attention", query=q, key=k, value=v,
                 attn_mask=attn_mask)
    keep, causal, offset, window, zero_rows = None, bool(is_causal), 0, 0, None
    if attn_mask is not None:
        keep, causal, offset, window, zero_rows = _analyse_mask(attn_mask, length)
        if keep is not None and keep.shape[0] != batch:
            keep = keep.repeat(batch, 0)
    qn = q.transpose(1, 2)  # [B, Sq, H, D]: a view; the binding copies q into rows if needed
    kn = k.transpose(1, 2)  # [B, T, G, D]: read in place (strided)
    vn = v.transpose(1, 2)
    if bq != batch:
        qn = qn.expand(batch, *qn.shape[1:])
    if bk != batch:
        kn = kn.expand(batch, *kn.shape[1:])
        vn = vn.expand(batch, *vn.shape[1:])
    out = _attend(qn, kn, vn, keep, causal, offset, scale, window, 0.0, None)
    if zero_rows is not None:  # [Bm, Sq]: rows the mask shows no key
        out.masked_fill_(torch.from_numpy(zero_rows).bool()[:, :, None, None], 0.0)
    # [B, H, Sq, Dv] over the kernel's [B, Sq, H, Dv] rows, not copied into torch's contiguous
    # layout (as CUDA's flash attention returns it too): the usual next step, HF's
    # out.transpose(1, 2).contiguous(), is then free. Sq == 1 (decode): contiguous anyway.
    result = out.transpose(1, 2)
    return result if q.dtype == torch.float32 else result.to(q.dtype)  # .to keeps the strides


@sdpa.register_fake
def _(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    batch, _, _, heads, _, queries, _, _, value_dim = _check_sdpa(
        q, k, v, attn_mask, is_causal, scale, enable_gqa)
    return q.new_empty((batch, queries, heads, value_dim)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# No backward: inputs that require grad while grad mode is on are refused when the operator
# runs (setup_context runs only then), instead of failing later in backward().


def _no_backward(name: str):
    def setup_context(ctx, inputs, output):
        raise RuntimeError(
            f"attn.ops.{name}: attn has no backward (autograd is not supported); an input "
            f"requires grad while grad mode is enabled. Call it under torch.no_grad() or "
            f"torch.inference_mode(), or pass detached tensors")

    def backward(ctx, grad):  # never reached: setup_context refuses first
        raise RuntimeError(f"attn.ops.{name}: attn has no backward")

    return backward, setup_context


for _op, _name in ((attention, "attention"), (mla_attention, "mla_attention"), (sdpa, "sdpa")):
    _backward, _setup = _no_backward(_name)
    _op.register_autograd(_backward, setup_context=_setup)
del _op, _name, _backward, _setup


# ---------------------------------------------------------------------------------------------
# The SDPA-compatible entry point


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False) -> Tensor

    torch.nn.functional.scaled_dot_product_attention (PyTorch 2.x semantics), computed by attn's
    kernels on the CPU: a drop-in replacement for the mask patterns attn expresses.

    query [B, H, Sq, D], key [B, G, T, D], value [B, G, T, Dv] (or [H, S, D] without the batch
    axis; key/value batch or heads of 1 broadcast, as in torch) -> [B, H, Sq, Dv] in the inputs'
    dtype (float32, float16 or bfloat16, all the same; computed in float32). The output's
    memory is laid out [B, Sq, H, Dv] (out.transpose(1, 2) is contiguous), as CUDA's flash
    attention returns it; torch's CPU SDPA returns a contiguous tensor. Decode (Sq = 1) is
    contiguous either way.

    - scale: default 1/sqrt(D); must be finite and positive (torch also takes others).
    - is_causal: top-left aligned as in torch: query s sees keys t <= s (torch.ones(Sq, T)
      .tril()); with Sq > T the last queries see every key. For bottom-right alignment
      (decode, flash-attn; query s at slot T - Sq + s) pass a mask, or use
      torch.ops.attn.attention(..., causal=True).
    - attn_mask: bool (True = attend) or float (added to the scores) broadcastable to
      [B, H, Sq, T]; with is_causal=True it is an error, as in torch. attn supports the masks
      that are key padding ([B, T], per batch) + causal with any query offset (top-left,
      bottom-right, a static cache's) + sliding window, identical for every head; float masks
      may hold only 0 and -inf. The mask is analysed inside the operator (so torch.compile sees
      one opaque op): a candidate (key padding, causal offset, window) is derived from it and
      verified by rebuilding the boolean mask and comparing exactly. Any other mask (an
      additive bias, a pattern that differs between heads, an arbitrary pattern) raises
      NotImplementedError("attn.scaled_dot_product_attention: this attn_mask is not
      expressible as key padding + causal + sliding window: <why>"). Nothing falls back to
      another implementation silently.
    - A query that may attend to no key gets a zero output row (torch on the CPU: zeros too).
    - dropout_p must be 0 (NotImplementedError otherwise).
    - enable_gqa: H must then be a multiple of G; query head h reads kv head h // (H/G) (as
      torch's repeat_interleave). Without it G must be H or 1 (torch's broadcast).
    - No autograd: inputs that require grad while grad mode is on raise RuntimeError.
    - CPU tensors only (RuntimeError otherwise); meta and fake tensors trace through
      torch.compile (the operator torch.ops.attn.sdpa has a fake kernel).
    """
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"attn.scaled_dot_product_attention: dropout is not supported (dropout_p must be "
            f"0.0, got {dropout_p}); attn is an inference library")
    if not isinstance(query, Tensor):
        raise TypeError(f"attn.scaled_dot_product_attention: query must be a torch.Tensor, "
                        f"got {type(query).__name__}")
    if query.dim() == 3:
        mask = attn_mask
        if mask is not None and mask.dim() == 4:
            raise ValueError("attn.scaled_dot_product_attention: a 4-d attn_mask needs "
                             "4-d [B, H, S, D] inputs")
        return sdpa(query.unsqueeze(0), key.unsqueeze(0) if key.dim() == 3 else key,
                    value.unsqueeze(0) if value.dim() == 3 else value, mask, is_causal, scale,
                    enable_gqa).squeeze(0)
    return sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)
