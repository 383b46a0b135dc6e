#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The stored-weight targets (issue 10), measured in one run with `attn bench layer`.

    scripts/bench_weight_dtypes.py [--attn build/attn] [--threads 2] [--rounds 3]
                                   [--decode 24] [--json FILE] [--markdown]

Cases (each run once per round, rounds interleaved so drift in the machine hits all alike):
  decode   DeepSeek-V3 layer, absorbed, context 4096 (4095 cached + 1 prefill token), batch 1,
           bf16 cache, weights f32 / bf16 / fp8: ms per decode step (median of the steps of a
           run; over the rounds: median, min, max), the step's weight + cache bytes per second
           against the DRAM read roof (`attn bench peak`, measured in this run).
  auto     the same shape with fp8 weights, naive vs auto: the latent cache's decode advantage.
  prefill  one 512-token prefill of a Llama-3-8B layer and of a DeepSeek-V3 layer (auto: the
           decompress form for a prefill of this size), f32 vs bf16 weights (fp8 too for V3):
           seconds (after the untimed warm-up prefill `attn bench layer` always runs).
  rss      `attn forward` on one full DeepSeek-V3 layer written by `attn random-weights`
           (fp8 and bf16), one token: peak RSS against the file size.
The targets are printed with each figure, met or not. Exit status 0 whatever the outcome.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_json(argv):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, argv))}\n{proc.stderr}")
    return json.loads(proc.stdout)


def layer_case(attn, threads, preset, weights, mla, prefill, decode, context, cache="bf16"):
    argv = [attn, "bench", "layer", "--preset", preset, "--prefill", prefill, "--decode", decode,
            "--context", context, "--dtype", cache, "--weights-dtype", weights, "--threads",
            threads, "--json"]
    if mla:
        argv += ["--mla", mla]
    return run_json(argv)


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def peak_rss_of(argv):
    """Peak RSS (bytes) of one child process, started fresh."""
    script = ("import resource, subprocess, sys\n"
              "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
              "sys.exit(r.returncode) if r.returncode else "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", script] + [str(a) for a in argv],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, argv))}\n{proc.stderr}")
    return int(proc.stdout.strip()) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attn", default=str(REPO / "build" / "attn"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode", type=int, default=24)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print tables for the docs")
    args = parser.parse_args()
    attn, t = args.attn, args.threads

    roof = run_json([attn, "bench", "peak", "--reset", "--max-threads", t, "--json"])
    dram = max(p["dram_gbps"] for p in roof["points"] if p["threads"] == t)

    decode_cases = {w: [] for w in ("f32", "bf16", "fp8")}
    decode_bytes = {}
    auto_cases = {"naive": [], "auto": []}
    prefill_cases = {("llama-3-8b", "f32"): [], ("llama-3-8b", "bf16"): [],
                     ("deepseek-v3", "f32"): [], ("deepseek-v3", "bf16"): [],
                     ("deepseek-v3", "fp8"): []}
    for _ in range(args.rounds):
        for w in decode_cases:
            r = layer_case(attn, t, "deepseek-v3", w, "absorbed", 1, args.decode, 4095)
            form = r["forms"][0]
            decode_cases[w].append(form["decode_ms_per_token"])
            decode_bytes[w] = form["decode_bytes_per_step"]
        for form_name in auto_cases:
            r = layer_case(attn, t, "deepseek-v3", "fp8", form_name, 1, args.decode, 4095)
            auto_cases[form_name].append(r["forms"][0]["decode_ms_per_token"])
        for (preset, w), runs in prefill_cases.items():
            mla = "auto" if preset == "deepseek-v3" else None
            r = layer_case(attn, t, preset, w, mla, 512, 0, 0)
            runs.append(512 / r["forms"][0]["prefill_tokens_per_s"])

    rss = {}
    with tempfile.TemporaryDirectory() as tmp:
        # One token of hidden states, uniform in [-1, 1), as a minimal safetensors file.
        x = Path(tmp) / "in.safetensors"
        rng = random.Random(1)
        values = struct.pack("<7168f", *(rng.uniform(-1.0, 1.0) for _ in range(7168)))
        header = json.dumps({"hidden_states": {"dtype": "F32", "shape": [1, 1, 7168],
                                               "data_offsets": [0, len(values)]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        x.write_bytes(struct.pack("<Q", len(header)) + header + values)
        for w in ("fp8", "bf16"):
            weights = Path(tmp) / f"w_{w}.safetensors"
            config = Path(tmp) / f"c_{w}.json"
            subprocess.run([attn, "random-weights", "--preset", "deepseek-v3", "--dtype", w,
                            "--output", weights, "--config-output", config], check=True)
            peak = peak_rss_of([attn, "forward", "--config", config, "--weights", weights,
                                "--input", x, "--output", Path(tmp) / "out.safetensors",
                                "--mla", "absorbed", "--threads", t])
            size = weights.stat().st_size
            rss[w] = {"file_bytes": size, "peak_rss_bytes": peak,
                      "limit_bytes": int(1.2 * size + 64 * 2**20)}
            weights.unlink()

    result = {"threads": t, "rounds": args.rounds, "dram_read_gbps": dram,
              "decode_ms": {w: summary(v) for w, v in decode_cases.items()},
              "decode_bytes_per_step": decode_bytes,
              "auto_vs_naive_ms": {k: summary(v) for k, v in auto_cases.items()},
              "prefill_s": {f"{p}/{w}": summary(v) for (p, w), v in prefill_cases.items()},
              "rss": rss}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    f32 = statistics.median(decode_cases["f32"])
    print(f"DRAM read roof {dram:.1f} GB/s ({t} threads)\n")
    print("| DeepSeek-V3 decode step, absorbed, T=4096, bf16 cache | ms/step median (min-max) | "
          "vs f32 | GB/s | % of DRAM roof | target |")
    print("|---|---|---|---|---|---|")
    targets = {"f32": ("", None), "bf16": (">= 1.8x", 1.8), "fp8": (">= 3x", 3.0)}
    for w, v in decode_cases.items():
        m = statistics.median(v)
        gbps = decode_bytes[w] / (m * 1e6)
        label, goal = targets[w]
        met = "" if goal is None else (" met" if f32 / m >= goal else " not met")
        print(f"| {w} weights | {m:.2f} ({min(v):.2f}-{max(v):.2f}) | {f32 / m:.2f}x | "
              f"{gbps:.1f} | {100 * gbps / dram:.0f} % (target >= 70 %) | {label}{met} |")
    naive, auto = (statistics.median(auto_cases[k]) for k in ("naive", "auto"))
    print(f"\nauto vs naive (fp8 weights, bf16 cache): {naive:.2f} / {auto:.2f} ms = "
          f"{naive / auto:.2f}x (target >= 3x{', met' if naive / auto >= 3 else ', not met'})\n")
    print("| prefill S=512 | seconds median (min-max) | bf16 (fp8) vs f32 | target |")
    print("|---|---|---|---|")
    for (p, w), v in prefill_cases.items():
        base = statistics.median(prefill_cases[(p, "f32")])
        m = statistics.median(v)
        goal = " (target >= 1.5x" + (", met)" if base / m >= 1.5 else ", not met)") \
            if w == "bf16" else ""
        print(f"| {p} {w} weights | {m:.3f} ({min(v):.3f}-{max(v):.3f}) | {base / m:.2f}x |"
              f"{goal} |")
    print("\n| attn forward, one DeepSeek-V3 layer | file MiB | peak RSS MiB | limit MiB | |")
    print("|---|---|---|---|---|")
    for w, r in rss.items():
        ok = "met" if r["peak_rss_bytes"] <= r["limit_bytes"] else "not met"
        print(f"| {w} | {r['file_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:.1f} | "
              f"{r['limit_bytes'] / 2**20:.1f} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
