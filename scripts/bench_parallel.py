#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""One layer's prefill and decode under `--parallel tp|dp|cp` against one process, on this
machine (docs/distributed.md, "Measured").

Every case runs `attn bench layer --json` as one process with T threads, then under
`mpirun -np W` with T/W threads per rank in each mode, `--repeats` times each, alternating; the
table gives the median of the runs' median decode step with the fastest and slowest run's,
prefill tokens/s (median), the bytes each rank holds, and the largest rank's peak RSS.

    scripts/bench_parallel.py [--attn build/attn] [--ranks 2] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

CASES = [
    # label, flags
    ("llama-3-8b, B=1, T=4096 bf16", ["--preset", "llama-3-8b", "--batch", "1", "--context",
                                      "4096", "--dtype", "bf16", "--weights-dtype", "bf16"]),
    ("llama-3-8b, B=8, T=1024 bf16", ["--preset", "llama-3-8b", "--batch", "8", "--context",
                                      "1024", "--dtype", "bf16", "--weights-dtype", "bf16"]),
    ("deepseek-v3 absorbed, B=4, T=2048 bf16",
     ["--preset", "deepseek-v3", "--mla", "absorbed", "--batch", "4", "--context", "2048",
      "--dtype", "bf16", "--weights-dtype", "bf16"]),
]


def mpi_env(threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_plm", "isolated")
    env.setdefault("OMPI_MCA_btl", "self,vader")
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["ATTN_NUM_THREADS"] = str(threads)
    return env


def run(cmd, threads) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(threads), timeout=900)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attn", default="build/attn")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (per run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--decode", type=int, default=16)
    args = parser.parse_args()
    mpirun = shutil.which("mpirun")
    base = [args.attn, "bench", "layer", "--prefill", str(args.prefill), "--decode",
            str(args.decode), "--json"]
    print(f"load before: {os.getloadavg()[0]:.2f}")
    print("| case | mode | ranks x threads | weights/rank MiB | cache MiB/rank | prefill tok/s |"
          " decode ms/step median [min, max] | peak RSS MiB (largest rank) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, flags in CASES:
        modes = {"one process": (None, args.threads)}
        for mode in ("tp", "dp", "cp"):
            modes[mode] = (mode, max(1, args.threads // args.ranks))
        results = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, (mode, threads) in modes.items():
                cmd = [*base, *flags]
                if mode:
                    cmd = [mpirun, "--oversubscribe", "-np", str(args.ranks), *cmd,
                           "--parallel", mode]
                results[name].append(run(cmd, threads))
        for name, runs in results.items():
            mode, threads = modes[name]
            form = [r["forms"][0] for r in runs]
            decode = sorted(f["decode_ms_per_token"] for f in form)
            prefill = statistics.median(f["prefill_tokens_per_s"] for f in form)
            rss = max(r.get("max_rank_peak_rss_bytes", f["peak_rss_bytes"])
                      for r, f in zip(runs, form))
            ranks = args.ranks if mode else 1
            print(f"| {label} | {name} | {ranks} x {threads} | "
                  f"{runs[0]['weights_bytes'] / 2**20:.1f} | {form[0]['cache_bytes'] / 2**20:.1f} | "
                  f"{prefill:.0f} | {statistics.median(decode):.2f} [{decode[0]:.2f}, "
                  f"{decode[-1]:.2f}] | {rss / 2**20:.0f} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
