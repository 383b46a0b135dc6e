# SPDX-License-Identifier: Apache-2.0
"""The GIL is released during compute: calls from several Python threads on different layers
run concurrently and give the same numbers as the same calls made one after another."""

from __future__ import annotations

import threading
import time

import numpy as np

from conftest import DSV3, LLAMA, MISTRAL, QWEN2, require_torch

torch = require_torch()


def test_threads_on_different_layers_match_serial(attn):
    jobs = []
    for i, cfg in enumerate([LLAMA, QWEN2, MISTRAL, DSV3, LLAMA, DSV3]):
        layer = attn.Attention.random(cfg, seed=i)
        x = torch.randn(2, 24, cfg["hidden_size"], generator=torch.Generator().manual_seed(i))
        jobs.append((layer, x))
    serial = [layer.forward(x) for layer, x in jobs]

    results = [[] for _ in jobs]
    errors = []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        layer, x = jobs[i]
        try:
            barrier.wait()
            for _ in range(5):
                results[i].append(layer.forward(x))
                cache = layer.new_cache(2, 24, dtype="f32")
                layer.prefill(x[:, :20], cache)
                for s in range(20, 24):
                    layer.decode(x[:, s], cache)
                assert cache.lengths.tolist() == [24, 24]
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, want in enumerate(serial):
        for got in results[i]:
            assert torch.equal(got, want), f"thread {i} differs from the serial result"


def _longest_stall(call):
    """Runs `call` in another thread while the main thread loops taking timestamps; returns the
    longest gap between two main-thread steps inside the call, and the call's duration. A call
    that holds the GIL stalls the main thread for (almost) all of its duration."""
    window = {}

    def worker():
        window["start"] = time.perf_counter()
        call()
        window["end"] = time.perf_counter()

    stamps = []
    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    inside = [window["start"]] + [s for s in stamps if window["start"] < s < window["end"]] + [
        window["end"]]
    return max(b - a for a, b in zip(inside, inside[1:])), window["end"] - window["start"]


def test_gil_released_during_layer_and_kernel_compute(attn):
    layer = attn.Attention.random(LLAMA)
    x = torch.randn(2, 256, LLAMA["hidden_size"])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 512, 8, 64), dtype=np.float32)
    k = rng.standard_normal((1, 512, 2, 64), dtype=np.float32)
    for one in (lambda: layer.forward(x), lambda: attn.attention(q, k, k)):
        def call():  # repeated for 0.2 s at least, however fast the kernels get
            start = time.perf_counter()
            while time.perf_counter() - start < 0.2:
                one()

        stall, seconds = _longest_stall(call)
        assert stall < 0.5 * seconds, (
            f"the main thread stalled {stall:.3f}s of a {seconds:.3f}s call: GIL held?")


def test_one_cache_from_two_threads_is_serialised(attn):
    layer = attn.Attention.random(QWEN2, seed=1)
    cache = layer.new_cache(1, 64, dtype="f32")
    x = torch.randn(1, 1, QWEN2["hidden_size"])
    errors = []

    def work():
        try:
            for _ in range(16):
                layer.decode(x, cache)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert cache.lengths.tolist() == [64]
