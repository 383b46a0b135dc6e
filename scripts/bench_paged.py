#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The packed-call target of the paged cache (docs/performance.md, "Paged caches"): one call
holding a prefill chunk of one sequence and single decode tokens of the others, against the
same work as one call per sequence, through attn's Python module on one layer.

Every timed run starts from forks of the same prepared sequences (forks share the full pages,
so preparing a run costs a page copy per sequence, outside the timing), and the two ways'
outputs are compared row for row. Medians with min and max over --rounds runs, the two ways
interleaved so machine noise hits both.

  PYTHONPATH=build/python python3 scripts/bench_paged.py [--preset llama-3-8b] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import attn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/llama-3.1-8b.json")
    parser.add_argument("--prefill", type=int, default=512, help="tokens of the prefill chunk")
    parser.add_argument("--decodes", type=int, default=15, help="sequences taking one token")
    parser.add_argument("--history", type=int, default=1024, help="tokens each decoder holds")
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()

    layer = attn.Attention.random(args.config, seed=1)
    width = layer.config["hidden_size"]
    rng = np.random.default_rng(0)
    sequences = 1 + args.decodes
    pages_each = (args.history + args.prefill) // args.page_size + 2
    pool = layer.new_paged_cache(pages=pages_each * sequences * 3, page_size=args.page_size,
                                 dtype=args.dtype)
    # The prefill sequence holds a short history too; the decoders hold --history tokens.
    bases = [pool.add() for _ in range(sequences)]
    for i, seq in enumerate(bases):
        held = args.history if i else 16
        layer.step(rng.standard_normal((held, width), dtype=np.float32), pool, seqs=[seq],
                   counts=[held])
    counts = [args.prefill] + [1] * args.decodes
    x = rng.standard_normal((sum(counts), width), dtype=np.float32)

    def run(mixed: bool):
        seqs = [pool.fork(seq) for seq in bases]
        start = time.perf_counter()
        if mixed:
            y = layer.step(x, pool, seqs=seqs, counts=counts)
        else:
            parts, row = [], 0
            for seq, count in zip(seqs, counts):
                parts.append(layer.step(x[row:row + count], pool, seqs=[seq], counts=[count]))
                row += count
            y = np.concatenate(parts)
        elapsed = time.perf_counter() - start
        for seq in seqs:
            pool.free(seq)
        return elapsed, y

    run(True)  # warm-up: workspaces sized for both ways
    run(False)
    mixed_times, separate_times, worst = [], [], 0.0
    for _ in range(args.rounds):
        t_mixed, y_mixed = run(True)
        t_separate, y_separate = run(False)
        mixed_times.append(t_mixed)
        separate_times.append(t_separate)
        worst = max(worst, float(np.max(np.abs(y_mixed - y_separate)) /
                                 max(float(np.max(np.abs(y_separate))), 1e-30)))

    def summary(times):
        return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                "max_ms": max(times) * 1e3, "runs": len(times)}

    result = {
        "config": args.config, "prefill": args.prefill, "decodes": args.decodes,
        "history": args.history, "page_size": args.page_size, "dtype": args.dtype,
        "threads": attn.get_num_threads() if hasattr(attn, "get_num_threads") else None,
        "mixed": summary(mixed_times), "separate": summary(separate_times),
        "separate_over_mixed": statistics.median(separate_times) / statistics.median(mixed_times),
        "max_relative_difference": worst,
    }
    print(f"{args.config}: one call [{args.prefill} + {args.decodes} x 1] "
          f"{result['mixed']['median_ms']:.1f} ms (min {result['mixed']['min_ms']:.1f}, max "
          f"{result['mixed']['max_ms']:.1f}); {sequences} calls "
          f"{result['separate']['median_ms']:.1f} ms (min {result['separate']['min_ms']:.1f}, "
          f"max {result['separate']['max_ms']:.1f}); separate/mixed "
          f"{result['separate_over_mixed']:.2f}x; outputs differ by {worst:.1e} relative")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
