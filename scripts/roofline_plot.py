#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Roofline plot of `attn bench kernel --json` results against this machine's measured roofs.

    scripts/roofline_plot.py --cases cases.jsonl --peak peak.json [--out docs/roofline.png]

--cases: JSON lines, each the output of `attn bench kernel ... --json` (or a row written by
scripts/compare_torch.py --json-out, whose "attn" field is one). An optional "label" field
names the point; otherwise the shape does.
--peak: the output of `attn bench peak --json` (or the cached peak file it names).
Roofs are drawn for every thread count the cases used: the fp32 FMA and bf16-dot compute roofs
and the DRAM-read bandwidth slope; each point sits at (FLOPs per unique K/V byte, GFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def load_cases(path: Path) -> list[dict]:
    cases = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "attn" in record:  # a compare_torch row
            label = record.get("case")
            record = dict(record["attn"])
            record.setdefault("label", label)
        for field in ("flops", "kv_bytes", "gflops", "threads", "dtype"):
            if field not in record:
                sys.exit(f"roofline_plot: {path}:{number}: missing '{field}'")
        cases.append(record)
    if not cases:
        sys.exit(f"roofline_plot: {path} holds no cases")
    return cases


def label_of(case: dict) -> str:
    if case.get("label"):
        return case["label"]
    kind = "prefill" if case.get("q_len", 1) > 1 else "decode"
    return (f"{kind} {case.get('variant', '?')} H{case.get('heads')} G{case.get('kv_heads')} "
            f"T{case.get('kv_len')} {case['dtype']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", required=True, type=Path)
    parser.add_argument("--peak", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/roofline.png"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    cases = load_cases(args.cases)
    peak = json.loads(args.peak.read_text())
    points = {p["threads"]: p for p in peak["points"]}
    thread_counts = sorted({c["threads"] for c in cases})
    missing = [t for t in thread_counts if t not in points]
    if missing:
        sys.exit(f"roofline_plot: the peak file has no roofs for {missing} thread(s)")

    intensities = [c["flops"] / c["kv_bytes"] for c in cases]
    x_lo = min(intensities + [1.0]) / 4
    x_hi = max(intensities + [1000.0]) * 4
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    line_styles = ["-", "--", ":", "-."]
    for index, threads in enumerate(reversed(thread_counts)):
        roof = points[threads]
        style = line_styles[index % len(line_styles)]
        bw = roof["dram_gbps"]
        tag = f"{threads} thread{'s' if threads > 1 else ''}"
        for name, compute, color in (("fp32 FMA", roof["fp32_gflops"], "tab:blue"),
                                     ("bf16 dot", roof.get("bf16_gflops", 0.0), "tab:red")):
            if compute <= 0:
                continue
            knee = compute / bw
            xs = [x_lo, knee, x_hi]
            ys = [bw * x_lo, compute, compute]
            ax.plot(xs, ys, style, color=color, linewidth=1.6,
                    label=f"{name} {compute:.0f} GFLOP/s, DRAM {bw:.1f} GB/s ({tag})")

    markers = {"f32": "o", "f16": "s", "bf16": "D"}
    placed = []  # (log10 x, log10 y) of labels so far, to stack labels of nearby points
    for case, intensity in zip(cases, intensities):
        color = "tab:blue" if case["dtype"] != "bf16" else "tab:red"
        filled = case["threads"] == thread_counts[-1]
        ax.scatter([intensity], [case["gflops"]], marker=markers.get(case["dtype"], "o"),
                   s=60, zorder=3, edgecolors=color, facecolors=color if filled else "none")
        fraction = case.get("peak_fraction")
        note = f" ({100 * fraction:.0f}% of roof)" if fraction is not None else ""
        here = (math.log10(intensity), math.log10(case["gflops"]))
        crowd = sum(1 for x, y in placed if abs(x - here[0]) < 0.6 and abs(y - here[1]) < 0.08)
        placed.append(here)
        ax.annotate(f"{label_of(case)}, {case['threads']}t{note}", (intensity, case["gflops"]),
                    textcoords="offset points", xytext=(6, -10 - 10 * crowd), fontsize=7.5)

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    # Room under the lowest point for its label.
    ax.set_ylim(bottom=min(c["gflops"] for c in cases) / 2.5)
    ax.set_xlabel("arithmetic intensity (FLOP per unique K/V byte)")
    ax.set_ylabel("GFLOP/s")
    cpu = peak.get("cpu_model", "this machine")
    ax.set_title(args.title or f"attn attention kernels on {cpu} "
                 f"({peak.get('logical_cpus', '?')} CPUs): measured roofs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
