# SPDX-License-Identifier: Apache-2.0
"""attn.PagedCache and Attention.step: a paged KV cache shared by sequences with int ids, stepped
with packed [N, D] calls. Paged equals contiguous (new_cache + prefill/decode) for a GQA layer
and an MLA layer in every form and storage dtype; a packed call equals its sequences one by one;
fork isolation; free and reuse of pages; bad arguments refused with the cache unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DSV3, LLAMA, V2LITE, require_torch

torch = require_torch()

DTYPES = ["f32", "f16", "bf16"]
# Relative to the largest output magnitude: both sides store K/V in the same dtype, so what
# differs is only the order of fp32 operations (and, for bf16/f16, the rounding it moves).
TOL = {"f32": 1e-5, "f16": 5e-4, "bf16": 4e-3}
# (config, mla form): a GQA layer, and an MLA layer with per-head (naive) and latent pages.
KINDS = {"gqa": (LLAMA, "auto"), "mla-naive": (DSV3, "naive"),
         "mla-absorbed": (DSV3, "absorbed"), "mla-auto": (DSV3, "auto")}
D = 128  # hidden_size of LLAMA and DSV3


@pytest.fixture(scope="module")
def layers(attn):
    return {"gqa": attn.Attention.random(LLAMA, seed=3), "mla": attn.Attention.random(DSV3, seed=3)}


def layer_for(layers, kind):
    return layers[kind.split("-")[0]]


def rows(n, seed):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def assert_close(got, want, tol):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= tol * np.abs(want).max(), f"max error {err:.3e}"


def state(cache, seqs):
    """What a refused call must leave as it was."""
    return cache.free_pages, cache.lengths(seqs)


# ============================================================================ paged == contiguous


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_paged_equals_contiguous(layers, kind, dtype):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    contiguous = layer.new_cache(batch=2, capacity=48, dtype=dtype, mla=mla)
    paged = layer.new_paged_cache(pages=12, page_size=16, dtype=dtype, mla=mla)
    # A sequence added, grown and freed first: ids do not start at 0 and the free pages are no
    # longer in order.
    scratch = paged.add()
    layer.step(rows(20, 99), paged, seqs=[scratch], counts=[20])
    seqs = [paged.add(), paged.add()]
    paged.free(scratch)
    assert paged.free_pages == 12

    # Prefill chunks (ragged, one sequence idle), then decode steps across a page boundary.
    schedule = [[7, 3], [6, 0], [0, 11]] + [[1, 1]] * 6
    seed = 10
    for counts in schedule:
        seed += 1
        width = max(counts)
        x = np.random.default_rng(seed).standard_normal((2, width, D)).astype(np.float32)
        if counts == [1, 1]:
            want = layer.decode(x[:, 0], contiguous)
            want_rows = want
        else:
            want = layer.prefill(x, contiguous, lengths=counts)
            want_rows = np.concatenate([want[b, :n] for b, n in enumerate(counts)])
        packed = np.concatenate([x[b, :n] for b, n in enumerate(counts)])
        got = layer.step(packed, paged, seqs=seqs, counts=counts)
        assert got.shape == (sum(counts), D) and got.dtype == np.float32
        assert_close(got, want_rows, TOL[dtype])
    assert paged.lengths(seqs) == list(contiguous.lengths) == [19, 20]
    assert paged.dtype == dtype and paged.mla == (None if kind == "gqa" else mla)
    assert paged.free_pages == 12 - 4 and paged.pages == 12 and paged.page_size == 16


@pytest.mark.parametrize("kind", ["gqa", "mla-absorbed"])
def test_nbytes_is_pages_times_bytes_per_token(layers, kind):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    for dtype in DTYPES:
        cache = layer.new_paged_cache(pages=5, page_size=32, dtype=dtype, mla=mla)
        assert cache.nbytes == 5 * 32 * layer.kv_bytes_per_token(dtype, mla)
        assert f"pages=5, page_size=32, dtype='{dtype}'" in repr(cache)


# ============================================================================ packed == one by one


@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_call_equals_sequences_one_by_one(layers, kind):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    history = [0, 9, 20, 5]  # tokens each sequence holds before the packed call
    counts = [12, 1, 1, 0]   # a prefill chunk, two decode tokens, an idle sequence
    pools, ids = [], []
    for _ in range(2):
        pool = layer.new_paged_cache(pages=16, page_size=16, dtype="f32", mla=mla)
        seqs = [pool.add() for _ in history]
        for i, (seq, n) in enumerate(zip(seqs, history)):
            if n:
                layer.step(rows(n, 20 + i), pool, seqs=[seq], counts=[n])
        pools.append(pool)
        ids.append(seqs)

    x = rows(sum(counts), 7)
    mask = np.ones(sum(counts), np.int64)
    mask[2] = 0  # a padding token inside the prefill chunk
    positions = np.concatenate([np.arange(h, h + n) for h, n in zip(history, counts)])
    packed = layer.step(x, pools[0], seqs=ids[0], counts=counts, position_ids=positions,
                        attention_mask=mask)
    assert packed.shape == (sum(counts), D)

    start = 0
    for i, n in enumerate(counts):
        if n == 0:
            continue
        one = layer.step(x[start:start + n], pools[1], seqs=[ids[1][i]], counts=[n],
                         attention_mask=mask[start:start + n])
        assert_close(packed[start:start + n], one, 1e-5)
        start += n
    assert pools[0].lengths(ids[0]) == [h + n for h, n in zip(history, counts)]
    assert pools[0].free_pages == pools[1].free_pages


def test_output_dtype_follows_hidden_states(layers):
    layer = layers["gqa"]
    cache = layer.new_paged_cache(pages=4, page_size=16, dtype="f32")
    seq = cache.add()
    x = rows(3, 1)
    assert layer.step(x.astype(np.float64), cache, [seq], [3]).dtype == np.float64
    assert layer.step(x.astype(np.float16), cache, [seq], [3]).dtype == np.float16
    out = layer.step(torch.from_numpy(x).to(torch.bfloat16), cache, [seq], [3])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    out = layer.step(torch.from_numpy(x), cache, torch.tensor([seq]), torch.tensor([3]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, D)
    assert cache.lengths(np.array([seq])) == [12]


# ============================================================================ fork, free, reuse


@pytest.mark.parametrize("kind", list(KINDS))
def test_fork_continues_like_a_fresh_sequence(layers, kind):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    cache = layer.new_paged_cache(pages=8, page_size=16, dtype="f32", mla=mla)
    prompt, parent_next, child_next = rows(21, 1), rows(3, 2), rows(2, 3)
    parent = cache.add()
    layer.step(prompt, cache, [parent], [21])  # 2 pages, the second partial
    free_before = cache.free_pages
    child = cache.fork(parent)
    assert child != parent and child in cache
    assert cache.free_pages == free_before - 1  # only the partial page was copied
    assert cache.lengths([parent, child]) == [21, 21]
    # Both continue in one call; neither sees the other's new tokens.
    out = layer.step(np.concatenate([parent_next, child_next]), cache, [parent, child], [3, 2])
    for tokens, got in ((parent_next, out[:3]), (child_next, out[3:])):
        fresh = layer.new_cache(batch=1, capacity=32, dtype="f32", mla=mla)
        layer.prefill(prompt[None], fresh)
        assert_close(got, layer.prefill(tokens[None], fresh)[0], 1e-5)
    assert cache.lengths([parent, child]) == [24, 23]
    # Freeing the parent keeps the shared page for the child.
    cache.free(parent)
    assert child in cache and cache.lengths([child]) == [23]
    cache.free(child)
    assert cache.free_pages == 8


@pytest.mark.parametrize("kind", ["gqa", "mla-absorbed"])
def test_free_returns_pages_and_ids_are_never_reused(layers, kind):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    cache = layer.new_paged_cache(pages=4, page_size=16, dtype="bf16", mla=mla)
    old = cache.add()
    layer.step(rows(40, 1), cache, [old], [40])
    assert cache.free_pages == 1
    cache.free(old)
    assert cache.free_pages == 4 and old not in cache
    new = cache.add()
    assert new != old and new in cache and np.int64(new) in cache
    assert "x" not in cache and 2**70 not in cache and -1 not in cache
    with pytest.raises(ValueError, match=f"sequence {old} is not live"):
        layer.step(rows(1, 2), cache, [old], [1])
    with pytest.raises(ValueError, match="freed"):
        cache.lengths([old])
    with pytest.raises(ValueError, match="freed"):
        cache.fork(old)
    with pytest.raises(ValueError, match="freed"):
        cache.free(old)
    with pytest.raises(ValueError, match="unknown sequence 99"):
        cache.fork(99)
    assert cache.free_pages == 4
    # The freed pages serve the new sequence: the whole pool, then exhaustion.
    layer.step(rows(64, 3), cache, [new], [64])
    assert cache.free_pages == 0 and cache.lengths([new]) == [64]
    with pytest.raises(ValueError, match="page pool exhausted"):
        layer.step(rows(1, 4), cache, [new], [1])
    assert cache.lengths([new]) == [64] and cache.free_pages == 0
    # At a page boundary a fork copies nothing, so it needs no free page ...
    twin = cache.fork(new)
    assert cache.lengths([twin]) == [64] and cache.free_pages == 0
    # ... but a partial last page must be copied.
    cache.free(new)
    cache.free(twin)
    first, second = cache.add(), cache.add()
    layer.step(rows(56, 5), cache, [first, second], [40, 16])  # 3 + 1 pages, first's partial
    with pytest.raises(ValueError, match="page pool exhausted"):
        cache.fork(first)
    assert cache.free_pages == 0 and cache.lengths([first, second]) == [40, 16]


# ============================================================================ bad arguments


@pytest.mark.parametrize("kind", ["gqa", "mla-absorbed"])
def test_bad_step_arguments_leave_the_cache_unchanged(layers, kind):
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    cache = layer.new_paged_cache(pages=4, page_size=16, dtype="f32", mla=mla)
    a, b, gone = cache.add(), cache.add(), cache.add()
    layer.step(rows(5, 1), cache, [a, b], [3, 2])
    cache.free(gone)
    before = state(cache, [a, b])
    x = rows(6, 2)
    bad = [
        # (hidden_states, seqs, counts, keyword arguments, exception, message)
        (x, [a, b], [5, 2], {}, ValueError, "counts: sum to 7 but hidden_states has 6 rows"),
        (x, [a, b], [3, 2], {}, ValueError, "counts: sum to 5"),
        (x, [a, b], [7, -1], {}, ValueError, r"counts: each must lie in \[0, 6\]"),
        (x, [a, b], [-1, 7], {}, ValueError, r"got -1 for sequence"),
        (x, [a, b], [5.0, 1.0], {}, ValueError, "counts: expected an integer dtype"),
        (x, [a, b], [6], {}, ValueError, r"counts: expected one per sequence, shape \[2\]"),
        (x, [a, b], [[5, 1]], {}, ValueError, "counts: expected one per sequence"),
        (x, [a, b], None, {}, ValueError, "counts"),
        (x, [a, a], [5, 1], {}, ValueError, f"seqs: sequence {a} appears twice"),
        (x, [a, gone], [5, 1], {}, ValueError, f"seqs: sequence {gone} is not live"),
        (x, [a, 99], [5, 1], {}, ValueError, "seqs: sequence 99 is not live"),
        (x, [a, -2], [5, 1], {}, ValueError, "seqs: sequence -2 is not live"),
        (x, [], [], {}, ValueError, "seqs: expected at least one sequence id"),
        (x, [float(a)], [6], {}, ValueError, "seqs: expected an integer dtype"),
        (x, a, [6], {}, ValueError, "seqs: expected a 1-D list"),
        (x, [a, b], [5, 1], {"position_ids": np.arange(5)}, ValueError,
         r"position_ids: expected shape \[6\]"),
        (x, [a, b], [5, 1], {"position_ids": np.arange(6)[None]}, ValueError, "position_ids"),
        (x, [a, b], [5, 1], {"position_ids": -np.arange(6)}, ValueError, "must be >= 0"),
        (x, [a, b], [5, 1], {"attention_mask": np.ones(7)}, ValueError,
         r"attention_mask: expected shape \[6\]"),
        (x, [a, b], [5, 1], {"attention_mask": np.full(6, 2)}, ValueError, "0 \\(pad\\) or 1"),
        (x[None], [a, b], [5, 1], {}, ValueError, r"packed tokens \[N, 128\].*got \[1, 6, 128\]"),
        (x[0], [a], [128], {}, ValueError, "packed tokens"),
        (x[:, :64], [a, b], [5, 1], {}, ValueError, r"got \[6, 64\]"),
        (x[:0], [a, b], [0, 0], {}, ValueError, "packed tokens"),
        (np.full((6, D), np.nan, np.float32), [a, b], [5, 1], {}, ValueError, "non-finite"),
    ]
    for hidden, seqs, counts, kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            layer.step(hidden, cache, seqs, counts, **kwargs)
        assert state(cache, [a, b]) == before, message
    # Too few free pages: refused as a whole, no sequence takes a page.
    with pytest.raises(ValueError, match="page pool exhausted"):
        layer.step(rows(60, 3), cache, [a, b], [30, 30])  # 2 + 1 more pages, 2 free
    assert state(cache, [a, b]) == before
    with pytest.raises(TypeError):
        cache.fork("a")
    with pytest.raises(TypeError):
        cache.free(1.5)
    with pytest.raises(ValueError, match="seqs: expected a 1-D list"):
        cache.lengths(a)
    assert cache.lengths([]) == []


def test_a_cache_serves_only_its_layer_kind(attn, layers):
    gqa, mla = layers["gqa"], layers["mla"]
    x = rows(1, 1)
    for layer, other in ((gqa, mla), (mla, gqa)):
        cache = other.new_paged_cache(pages=2, page_size=16, dtype="f32")
        seq = cache.add()
        with pytest.raises(ValueError, match="this paged cache was made by"):
            layer.step(x, cache, [seq], [1])
        assert cache.lengths([seq]) == [0] and cache.free_pages == 2
    # Another MLA layer with other widths: refused by the layer's own check.
    small = attn.Attention.random(V2LITE, seed=1)
    cache = mla.new_paged_cache(pages=2, page_size=16, dtype="f32", mla="absorbed")
    seq = cache.add()
    with pytest.raises(ValueError, match="latent cache"):
        small.step(rows(1, 2)[:, :96], cache, [seq], [1])
    assert cache.lengths([seq]) == [0] and cache.free_pages == 2
    # A contiguous cache is not a paged one, and the reverse.
    with pytest.raises(TypeError):
        gqa.step(x, gqa.new_cache(1, 4), [0], [1])
    with pytest.raises(TypeError):
        gqa.decode(x, gqa.new_paged_cache(pages=2, page_size=16))


def test_bad_new_paged_cache_arguments(layers):
    gqa, mla = layers["gqa"], layers["mla"]
    for dtype in ("fp8", "int8"):  # quantized storage is paged-only
        with pytest.raises(ValueError, match="paged caches only"):
            mla.new_cache(1, 4, dtype=dtype, mla="absorbed")
    with pytest.raises(ValueError, match="invalid storage dtype 'f64'"):
        gqa.new_paged_cache(pages=4, dtype="f64")
    for page_size in (8, 24, 512):
        with pytest.raises(ValueError, match="page size must be a multiple of 16"):
            gqa.new_paged_cache(pages=4, page_size=page_size)
    for pages in (0, -1):
        with pytest.raises(ValueError, match="page count"):
            gqa.new_paged_cache(pages=pages)
    with pytest.raises(ValueError, match="applies only to MLA models"):
        gqa.new_paged_cache(pages=4, mla="absorbed")
    with pytest.raises(ValueError, match="unknown MLA form"):
        mla.new_paged_cache(pages=4, mla="latent")
    assert gqa.new_paged_cache(pages=4).page_size == 64
    assert gqa.new_paged_cache(pages=4, mla="auto").mla is None


@pytest.mark.parametrize("kind", ["gqa", "mla"])
@pytest.mark.parametrize("dtype,bound", [("fp8", 6e-2), ("int8", 1e-2)])
def test_quantized_pages_follow_a_bf16_pool(layers, kind, dtype, bound):
    """fp8 / int8 pages (one scale per token and kv head) give the bf16 pool's outputs within
    the format's rounding (bounds about 2x the C++ tests' measured error), decode == prefill."""
    layer = layers[kind]
    width = layer.config["hidden_size"]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, width)).astype(np.float32)
    outputs = {}
    for storage in ("bf16", dtype):
        pool = layer.new_paged_cache(pages=8, page_size=16, dtype=storage,
                                     mla="absorbed" if kind == "mla" else "auto")
        assert pool.dtype == storage
        seq = pool.add()
        first = layer.step(x[:12], pool, [seq], [12])
        rest = [layer.step(x[i:i + 1], pool, [seq], [1]) for i in range(12, 20)]
        outputs[storage] = np.concatenate([first] + rest)
        whole = layer.new_paged_cache(pages=8, page_size=16, dtype=storage,
                                      mla="absorbed" if kind == "mla" else "auto")
        one = whole.add()
        # A 20-row prefill may score with bf16 products (Q rounded to bf16) where decode rows
        # use fp32: decode == prefill to bf16 rounding.
        np.testing.assert_allclose(layer.step(x, whole, [one], [20]), outputs[storage],
                                   rtol=0, atol=5e-3 * np.abs(outputs[storage]).max())
    ref = outputs["bf16"]
    err = np.abs(outputs[dtype] - ref).max() / np.abs(ref).max()
    assert 0 < err < bound, err


# ================================================================ positions only go forward


@pytest.mark.parametrize("kind", ["gqa", "mla-absorbed"])
def test_positions_going_backwards_are_refused(layers, kind):
    """A step whose tokens' positions are not after the largest one a sequence's cache holds is
    refused before anything is written (docs/semantics.md §4), paged and contiguous."""
    _, mla = KINDS[kind]
    layer = layer_for(layers, kind)
    cache = layer.new_paged_cache(pages=8, page_size=16, mla=mla)
    a, b = cache.add(), cache.add()
    layer.step(rows(6, 1), cache, seqs=[a, b], counts=[4, 2],
               position_ids=[10, 11, 12, 13, 0, 1])
    before = state(cache, [a, b])
    with pytest.raises(ValueError, match=r"position_ids go backwards: sequence 1.*position 1, "
                                         r"not after position 1"):
        layer.step(rows(2, 2), cache, seqs=[a, b], counts=[1, 1], position_ids=[14, 1])
    assert state(cache, [a, b]) == before
    child = cache.fork(a)
    with pytest.raises(ValueError, match="not after position 13"):
        layer.step(rows(1, 3), cache, seqs=[child], counts=[1], position_ids=[5])
    layer.step(rows(2, 4), cache, seqs=[a, b], counts=[1, 1], position_ids=[14, 2])

    contiguous = layer.new_cache(batch=1, capacity=8, dtype="f32", mla=mla)
    layer.prefill(rows(3, 5)[None], contiguous, position_ids=[[7, 8, 9]])
    with pytest.raises(ValueError, match="not after position 9"):
        layer.decode(rows(1, 6), contiguous, position_ids=[3])
    assert list(contiguous.lengths) == [3]
    contiguous.clear()
    layer.prefill(rows(3, 5)[None], contiguous)  # slot positions 0, 1, 2 after clear()
