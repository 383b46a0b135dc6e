#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""attn vs PyTorch on the same attention shapes, side by side.

For each case this runs `attn bench kernel ... --json` and then the same shape through PyTorch
written the way users write attention: q @ k^T * scale, masked_fill for the causal mask,
softmax, @ v, with repeat_interleave to widen GQA/MQA kv heads to the query heads (MLA: the
latent rows broadcast over heads, as in DeepSeek's absorbed reference code). Both sides use the
same thread count, one warm-up run and the median of --repeat runs; FLOPs are counted once, by
attn's formula, so the ratio is a ratio of times.

    scripts/compare_torch.py --attn build/attn [--threads 2] [--repeat 5] [--cases quick]
    attn bench --compare-torch [same options]

Debian's python3-torch is used (/usr/bin/python3). PyTorch on CPU has no f16 matmul, so f16
cases run in fp32 on the torch side (noted in the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name, variant, H, G, D, DV, S, T, causal, dtype: issue 3's performance table.
FULL_CASES = [
    ("prefill gqa f32", "gqa", 32, 8, 128, 128, 2048, 2048, True, "f32"),
    ("prefill gqa bf16", "gqa", 32, 8, 128, 128, 2048, 2048, True, "bf16"),
    ("decode gqa bf16", "gqa", 32, 8, 128, 128, 1, 16384, False, "bf16"),
    ("decode mqa bf16", "gqa", 32, 1, 128, 128, 1, 16384, False, "bf16"),
    ("decode mha bf16", "gqa", 32, 32, 128, 128, 1, 16384, False, "bf16"),
    ("decode mla bf16", "mla", 128, 1, 576, 512, 1, 4096, False, "bf16"),
]
# The same mechanisms at a size that runs in seconds (tests, smoke runs).
QUICK_CASES = [
    ("prefill gqa f32", "gqa", 8, 2, 64, 64, 128, 128, True, "f32"),
    ("decode gqa bf16", "gqa", 8, 2, 64, 64, 1, 1024, False, "bf16"),
    ("decode mla bf16", "mla", 16, 1, 576, 512, 1, 256, False, "bf16"),
]


def attn_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    for candidate in (os.environ.get("ATTN_BIN"), REPO / "build" / "attn"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("compare_torch: no attn binary (pass --attn PATH or set ATTN_BIN)")


def run_attn(binary: str, case, threads: int, repeat: int) -> dict:
    _, variant, h, g, d, dv, s, t, causal, dtype = case
    cmd = [binary, "bench", "kernel", "--variant", variant, "--heads", str(h), "--kv-heads",
           str(g), "--head-dim", str(d), "--v-head-dim", str(dv), "--q-len", str(s), "--kv-len",
           str(t), "--dtype", dtype, "--threads", str(threads), "--repeat", str(repeat), "--json"]
    if causal:
        cmd.append("--causal")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_torch: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def torch_case(case, threads: int, repeat: int) -> tuple[float, str]:
    """Median seconds of the PyTorch formulation, and the dtype it ran in."""
    import torch

    torch.set_num_threads(threads)
    _, variant, h, g, d, dv, s, t, causal, dtype = case
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float32}[dtype]
    gen = torch.Generator().manual_seed(0)
    scale = 1.0 / math.sqrt(d)

    def rand(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(torch_dtype)

    q = rand(1, h, s, d)
    if variant == "mla":
        latent = rand(1, t, d)  # one row per token; values are its first dv entries
    else:
        k = rand(1, g, t, d)
        v = rand(1, g, t, dv)
    mask = None
    if causal:
        # Query i sits at slot t - s + i and must not see later keys.
        mask = torch.ones(s, t, dtype=torch.bool).triu(t - s + 1)

    def run():
        if variant == "mla":
            scores = torch.einsum("bhsc,btc->bhst", q, latent) * scale
        else:
            kk = k.repeat_interleave(h // g, dim=1)
            vv = v.repeat_interleave(h // g, dim=1)
            scores = (q @ kk.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        if variant == "mla":
            return torch.einsum("bhst,btc->bhsc", p, latent[..., :dv])
        return p @ vv

    with torch.no_grad():
        run()  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times), str(torch_dtype).replace("torch.", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attn", help="attn binary (default $ATTN_BIN or build/attn)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", choices=["full", "quick"], default="full")
    parser.add_argument("--json-out", help="also write one JSON object per case to this file")
    args = parser.parse_args()
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be >= 1")
    binary = attn_binary(args.attn)
    cases = FULL_CASES if args.cases == "full" else QUICK_CASES

    load_before = os.getloadavg()[0]
    rows = []
    for case in cases:
        attn = run_attn(binary, case, args.threads, args.repeat)
        torch_s, torch_dtype = torch_case(case, args.threads, args.repeat)
        rows.append({
            "case": case[0], "threads": args.threads, "attn": attn,
            "attn_s": attn["median_s"], "torch_s": torch_s, "torch_dtype": torch_dtype,
            "attn_gflops": attn["gflops"], "torch_gflops": attn["flops"] / torch_s / 1e9,
            "speedup": torch_s / attn["median_s"],
        })
        print(f"  {case[0]} done", file=sys.stderr, flush=True)

    print(f"attn ({rows[0]['attn']['backend']}) vs PyTorch "
          f"(matmul-softmax-matmul), {args.threads} thread(s), median of {args.repeat}")
    header = (f"{'case':<18} {'shape':<34} {'attn ms':>10} {'GFLOP/s':>8} {'torch ms':>10} "
              f"{'GFLOP/s':>8} {'attn/torch':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        a = r["attn"]
        shape = (f"H{a['heads']} G{a['kv_heads']} D{a['head_dim']}/{a['v_head_dim']} "
                 f"S{a['q_len']} T{a['kv_len']}{' c' if a['causal'] else ''}")
        note = "" if r["torch_dtype"] != "float32" or a["dtype"] != "f16" else " (torch f32)"
        print(f"{r['case']:<18} {shape:<34} {1e3 * r['attn_s']:>10.3f} {r['attn_gflops']:>8.1f} "
              f"{1e3 * r['torch_s']:>10.3f} {r['torch_gflops']:>8.1f} "
              f"{r['speedup']:>9.2f}x{note}")
    print(f"attn/torch > 1 means attn is faster. Load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other processes share these CPUs).")
    if args.json_out:
        with open(args.json_out, "w") as out:
            for r in rows:
                out.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
