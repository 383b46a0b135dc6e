#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The decode targets, measured in one run: every case of the decode-at-the-roof table against
roofs measured in the same run.

    scripts/bench_decode.py [--attn build/attn] [--threads 2] [--rounds 3] [--repeat 10]
                            [--markdown] [--json FILE]

1. `attn bench peak --reset` measures the roofs (DRAM read GB/s as STREAM measures it, fp32-FMA
   and bf16-dot GFLOP/s) before the cases and again after them; a roof is the higher of the
   two (the machine reached it).
2. Each round runs every case once (`attn bench kernel --json`, `--repeat` timed calls after a
   warm-up), cases interleaved so that drift in the machine hits all of them alike. A case's
   samples are all its timed calls over all rounds: median, min and max are over those.
3. Each case is put against its target: K/V read at >= 80 % of the DRAM read roof for the
   memory-bound GQA-family cases, >= 50 % of the bf16-dot peak for absorbed MLA. Cases whose
   arithmetic intensity puts them under the compute roof on this machine (MQA and speculative
   GQA, 32 query rows per kv head) are reported against that roof instead, marked as such.

4. With --busy-core, every case runs once more (same rounds) beside a process that spins on one
   CPU, as a co-tenant would: how much slower the step gets when one of the kernel's cores is
   shared (ideal with 2 threads: 4/3 of the quiet time, not 2x).

Exit status 0 whether targets are met or not (this is a measurement); 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

GQA = ["--variant", "gqa", "--head-dim", "128"]
# label, attn bench kernel arguments, target kind ("dram" or "bf16")
CASES = [
    ("MHA 32/32 T=16384 f32", GQA + ["--heads", "32", "--q-len", "1", "--kv-len", "16384",
                                     "--dtype", "f32"], "dram"),
    ("MHA 32/32 T=16384 f16", GQA + ["--heads", "32", "--q-len", "1", "--kv-len", "16384",
                                     "--dtype", "f16"], "dram"),
    ("MHA 32/32 T=16384 bf16", GQA + ["--heads", "32", "--q-len", "1", "--kv-len", "16384",
                                      "--dtype", "bf16"], "dram"),
    ("MHA 32/32 T=16384 f16, token-major [T,G,D]",
     GQA + ["--heads", "32", "--q-len", "1", "--kv-len", "16384", "--dtype", "f16",
            "--layout", "token-major"], "dram"),
    ("GQA 32/8 T=16384 bf16", GQA + ["--heads", "32", "--kv-heads", "8", "--q-len", "1",
                                     "--kv-len", "16384", "--dtype", "bf16"], "dram"),
    ("GQA 32/8 T=4096 f32", GQA + ["--heads", "32", "--kv-heads", "8", "--q-len", "1",
                                   "--kv-len", "4096", "--dtype", "f32"], "dram"),
    ("GQA 32/8 batch 8 ragged T=16384..9216 bf16",
     GQA + ["--heads", "32", "--kv-heads", "8", "--q-len", "1", "--kv-len", "16384",
            "--dtype", "bf16", "--batch", "8"], "dram"),
    ("MHA 32/32 batch 8 ragged T=4096..2304 f16",
     GQA + ["--heads", "32", "--q-len", "1", "--kv-len", "4096", "--dtype", "f16",
            "--batch", "8"], "dram"),
    ("MHA 32/32 S=8 (speculative) T=16384 f16",
     GQA + ["--heads", "32", "--q-len", "8", "--kv-len", "16384", "--dtype", "f16",
            "--causal"], "dram"),
    ("GQA 32/8 S=4 (speculative) T=4096 bf16",
     GQA + ["--heads", "32", "--kv-heads", "8", "--q-len", "4", "--kv-len", "4096",
            "--dtype", "bf16", "--causal"], "dram"),
    # The attention of naive MLA: 128 heads of K 192 / V 128 cached per token.
    ("MLA naive 128/128 K192/V128 T=4096 bf16",
     ["--variant", "gqa", "--heads", "128", "--head-dim", "192", "--v-head-dim", "128",
      "--q-len", "1", "--kv-len", "4096", "--dtype", "bf16"], "dram"),
    ("MQA 32/1 T=16384 bf16", GQA + ["--heads", "32", "--kv-heads", "1", "--q-len", "1",
                                     "--kv-len", "16384", "--dtype", "bf16"], "dram"),
    ("MLA absorbed 128 heads 576/512 T=4096 bf16",
     ["--variant", "mla", "--heads", "128", "--q-len", "1", "--kv-len", "4096", "--dtype",
      "bf16"], "bf16"),
]


def run_json(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench_decode: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def peak(attn: str, threads: int) -> dict:
    result = run_json([attn, "bench", "peak", "--reset", "--json", "--max-threads", str(threads)])
    for point in result["points"]:
        if point["threads"] == threads:
            return point
    sys.exit(f"bench_decode: no {threads}-thread point in attn bench peak's output")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attn", default=str(REPO / "build" / "attn"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="FILE", help="write roofs and every sample here")
    parser.add_argument("--busy-core", action="store_true",
                        help="measure the cases again beside a process spinning on one CPU")
    args = parser.parse_args()
    if args.threads < 1 or args.rounds < 1 or args.repeat < 1:
        parser.error("--threads, --rounds and --repeat must be >= 1")
    if not Path(args.attn).exists():
        parser.error(f"no attn binary at {args.attn}")

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    before = peak(args.attn, args.threads)
    samples: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    shares: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    last: dict[str, dict] = {}

    def measure(into: dict[str, list[float]]) -> None:
        for _ in range(args.rounds):
            for label, case, _ in CASES:
                result = run_json([args.attn, "bench", "kernel", *case, "--threads",
                                   str(args.threads), "--repeat", str(args.repeat), "--json"])
                into[label] += result["times_s"]
                shares[label].append(result["machine_share"])
                last[label] = result

    measure(samples)
    busy: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    if args.busy_core:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            measure(busy)
        finally:
            spinner.kill()
            spinner.wait()
    after = peak(args.attn, args.threads)
    roofs = {key: max(before[key], after[key])
             for key in ("dram_gbps", "dram_triad_gbps", "fp32_gflops", "bf16_gflops")}

    rows = []
    for label, _, target in CASES:
        times = samples[label]
        result = last[label]
        median = statistics.median(times)
        gbps = result["kv_bytes"] / median / 1e9
        gflops = result["flops"] / median / 1e9
        dram_share = gbps / roofs["dram_gbps"]
        # The compute roof of the units the kernel uses: bf16 dot products for bf16 K/V with more
        # than 8 query rows per kv head (absorbed MLA, MQA, speculative GQA), fp32 FMA otherwise
        # (decode blocks of <= 8 rows compute in fp32 whatever the dtype).
        rows_per_kv_head = (result["q_len"] * result["heads"]
                            // (1 if result["variant"] == "mla" else result["kv_heads"]))
        bf16_units = result["dtype"] == "bf16" and rows_per_kv_head > 8 and roofs["bf16_gflops"] > 0
        compute_roof = roofs["bf16_gflops"] if bf16_units else roofs["fp32_gflops"]
        compute_share = gflops / compute_roof
        memory_roof = result["arithmetic_intensity"] * roofs["dram_gbps"]
        bound = "compute" if compute_roof < memory_roof and target == "dram" else target
        if target == "bf16":
            goal, achieved = 0.50, compute_share
        elif bound == "compute":
            goal, achieved = 0.80, gflops / compute_roof
        else:
            goal, achieved = 0.80, dram_share
        rows.append({
            "case": label, "target": target, "bound": bound, "median_s": median,
            "min_s": min(times), "max_s": max(times), "samples": len(times), "gbps": gbps,
            "gflops": gflops, "dram_share": dram_share, "compute_share": compute_share,
            "goal": goal, "achieved": achieved, "met": round(achieved, 4) >= goal,
            "compute_units": "bf16-dot" if bf16_units else "fp32-fma",
            "machine_share_min": min(shares[label]), "kv_bytes": result["kv_bytes"],
            "flops": result["flops"],
        })
        if busy[label]:
            rows[-1]["busy_median_s"] = statistics.median(busy[label])
            rows[-1]["busy_min_s"] = min(busy[label])
            rows[-1]["busy_max_s"] = max(busy[label])

    if args.json:
        Path(args.json).write_text(json.dumps({
            "started": started, "threads": args.threads, "rounds": args.rounds,
            "repeat": args.repeat, "peak_before": before, "peak_after": after, "roofs": roofs,
            "cases": rows, "samples": samples, "busy_samples": busy}, indent=1))

    print(f"roofs ({args.threads} threads, higher of before/after): DRAM read "
          f"{roofs['dram_gbps']:.1f} GB/s (before {before['dram_gbps']:.1f}, after "
          f"{after['dram_gbps']:.1f}; triad {roofs['dram_triad_gbps']:.1f}), fp32 FMA "
          f"{roofs['fp32_gflops']:.0f} GFLOP/s, bf16 dot {roofs['bf16_gflops']:.0f} GFLOP/s")
    if args.markdown:
        print("\n| case | median ms (min–max) | K/V GB/s | % DRAM read roof | GFLOP/s | "
              "% compute roof (units) | target | met |")
        print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        units = "bf16-dot" if row["compute_units"] == "bf16-dot" else "fp32"
        target = ("≥ 50 % bf16 peak" if row["target"] == "bf16" else
                  f"≥ 80 % {units} peak (compute-bound here)" if row["bound"] == "compute" else
                  "≥ 80 % DRAM read")
        cells = [row["case"],
                 f"{row['median_s'] * 1e3:.2f} ({row['min_s'] * 1e3:.2f}–{row['max_s'] * 1e3:.2f})",
                 f"{row['gbps']:.1f}", f"{100 * row['dram_share']:.1f} %", f"{row['gflops']:.0f}",
                 f"{100 * row['compute_share']:.1f} % ({units})", target,
                 "yes" if row["met"] else "no"]
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print("  ".join(cells))
    if args.busy_core:
        print("\nbeside a process spinning on one CPU:")
        if args.markdown:
            print("\n| case | quiet median ms | busy median ms (min–max) | slowdown |")
            print("|---|---|---|---|")
        for row in rows:
            cells = [row["case"], f"{row['median_s'] * 1e3:.2f}",
                     f"{row['busy_median_s'] * 1e3:.2f} ({row['busy_min_s'] * 1e3:.2f}–"
                     f"{row['busy_max_s'] * 1e3:.2f})",
                     f"{row['busy_median_s'] / row['median_s']:.2f}x"]
            print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
