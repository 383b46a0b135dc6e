#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""attn.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention,
in one process, same thread count, on the decode and prefill shapes of docs/performance.md.

    PYTHONPATH=build/python .venv/bin/python scripts/bench_sdpa.py [--threads 2] [--repeat 9]
        [--prefill-repeat 5] [--cases SUBSTRING ...] [--json FILE]

Both sides get the same [B, H, S, D] tensors (K/V as a [B, G, T, D] cache, HF's layout), the same
mask arguments and torch.set_num_threads == attn.set_num_threads == --threads; both run under
torch.inference_mode(). OMP_WAIT_POLICY=PASSIVE is set before torch is imported (unless set
already), so that libgomp's idle workers do not spin on the cores the other library is using.
Each case: two warm-up calls per side, then --repeat samples per side, alternating attn and
torch with a short pause before each; a sample is the median of back-to-back calls worth about
30 ms (at most 50 calls; one call for the long prefill cases), as scripts/compare_torch.py
measures. Reported: median (min-max) of the samples in ms per call, torch's median / attn's
(> 1: attn is faster), the SDPA backend torch picked (torch._fused_sdp_choice),
and max |attn - torch| / max |torch| as a sanity check (the tests check accuracy properly).
Prints a markdown table; --json writes every sample and the machine's load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAUSE_S = 0.02
ROUND_S = 0.03
MAX_INNER = 50
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


@dataclass
class Case:
    name: str
    heads: int
    kv_heads: int
    queries: int
    length: int
    dtype: str
    dim: int = 128
    value_dim: int = 128
    batch: int = 1
    # "none", "is_causal" (top-left, = bottom-right when Sq == T), "bottom_right" (bool [Sq, T]),
    # "left_padding" (bool [B, 1, Sq, T]: sequence b loses pads[b] keys, causal bottom-right)
    mask: str = "none"
    pads: tuple = ()
    prefill: bool = False
    samples: dict = field(default_factory=dict)

    def shape(self) -> str:
        batch = f"B{self.batch} " if self.batch > 1 else ""
        dims = f"D{self.dim}" + (f"/{self.value_dim}" if self.value_dim != self.dim else "")
        pads = (f" T{self.length - max(self.pads)}..{self.length}" if self.pads
                else f" T{self.length}")
        return f"{batch}H{self.heads} G{self.kv_heads} {dims} S{self.queries}{pads}"


CASES = [
    # Decode (one query per sequence), the decode-at-the-roof shapes of docs/performance.md.
    Case("decode GQA", 32, 8, 1, 4096, "bf16"),
    Case("decode GQA", 32, 8, 1, 4096, "f32"),
    Case("decode GQA", 32, 8, 1, 16384, "bf16"),
    Case("decode MHA", 32, 32, 1, 16384, "bf16"),
    Case("decode MQA", 32, 1, 1, 16384, "bf16"),
    Case("decode GQA ragged batch (padding mask)", 32, 8, 1, 4096, "bf16", batch=4,
         mask="left_padding", pads=(0, 512, 1024, 1536)),
    Case("decode MLA-shaped K192/V128", 128, 128, 1, 4096, "bf16", dim=192, value_dim=128),
    Case("speculative GQA (causal mask)", 32, 8, 4, 4096, "bf16", mask="bottom_right"),
    # Prefill (causal), the prefill targets of docs/performance.md.
    Case("prefill GQA", 32, 8, 1024, 1024, "bf16", mask="is_causal", prefill=True),
    Case("prefill GQA", 32, 8, 1024, 1024, "f32", mask="is_causal", prefill=True),
    Case("prefill GQA", 32, 8, 2048, 2048, "bf16", mask="is_causal", prefill=True),
    Case("prefill GQA", 32, 8, 2048, 2048, "f32", mask="is_causal", prefill=True),
    Case("prefill GQA left-padded batch (bool mask)", 32, 8, 1024, 1024, "bf16", batch=2,
         mask="left_padding", pads=(0, 256), prefill=True),
]


def _import_attn():
    try:
        import attn
    except ImportError:
        sys.path.insert(0, str(REPO / "build" / "python"))
        import attn
    return attn


def _inputs(case: Case):
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[case.dtype]
    q = torch.randn(case.batch, case.heads, case.queries, case.dim, generator=g).to(dtype)
    k = torch.randn(case.batch, case.kv_heads, case.length, case.dim, generator=g).to(dtype)
    v = torch.randn(case.batch, case.kv_heads, case.length, case.value_dim, generator=g).to(dtype)
    kwargs = {"enable_gqa": case.kv_heads != case.heads}
    t = torch.arange(case.length)[None, :]
    causal = t <= (case.length - case.queries + torch.arange(case.queries)[:, None])
    if case.mask == "is_causal":
        kwargs["is_causal"] = True
    elif case.mask == "bottom_right":
        kwargs["attn_mask"] = causal
    elif case.mask == "left_padding":
        keep = torch.ones(case.batch, case.length, dtype=torch.bool)
        for b, pad in enumerate(case.pads):
            keep[b, :pad] = False
        kwargs["attn_mask"] = keep[:, None, None, :] & causal
    return (q, k, v), kwargs


def _backend_name(q, k, v, kwargs) -> str:
    try:
        from torch.nn.attention import SDPBackend
        choice = torch._fused_sdp_choice(q, k, v, kwargs.get("attn_mask"), 0.0,
                                         kwargs.get("is_causal", False),
                                         enable_gqa=kwargs.get("enable_gqa", False))
        return SDPBackend(choice).name.lower()
    except Exception:  # private API: report what we can
        return "?"


def _sample(fn, inner: int) -> float:
    """Median ms of `inner` back-to-back calls, after a pause (the other library's idle workers
    must not share the cores)."""
    time.sleep(PAUSE_S)
    times = []
    for _ in range(inner):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_case(attn, case: Case, repeat: int) -> dict:
    (q, k, v), kwargs = _inputs(case)
    attn_call = lambda: attn.scaled_dot_product_attention(q, k, v, **kwargs)  # noqa: E731
    torch_call = lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)  # noqa: E731
    with torch.inference_mode():
        out_attn, out_torch = attn_call(), torch_call()
        diff = ((out_attn.float() - out_torch.float()).abs().max()
                / out_torch.float().abs().max().clamp_min(1e-30)).item()
        warm = max(_sample(attn_call, 1), _sample(torch_call, 1)) / 1e3
        inner = max(1, min(MAX_INNER, int(ROUND_S / max(warm, 1e-6))))
        attn_ms, torch_ms = [], []
        for _ in range(repeat):
            attn_ms.append(_sample(attn_call, inner))
            torch_ms.append(_sample(torch_call, inner))
    summary = lambda xs: {"median": statistics.median(xs), "min": min(xs),  # noqa: E731
                          "max": max(xs), "samples": xs}
    return {"case": case.name, "shape": case.shape(), "dtype": case.dtype, "mask": case.mask,
            "calls_per_sample": inner,
            "attn_ms": summary(attn_ms), "torch_ms": summary(torch_ms),
            "speedup": statistics.median(torch_ms) / statistics.median(attn_ms),
            "torch_backend": _backend_name(q, k, v, kwargs), "max_rel_diff": diff}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ms(stats: dict) -> str:
    fmt = lambda x: f"{x:.3g}" if x < 100 else f"{x:.0f}"  # noqa: E731
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9, help="timed calls per side (decode)")
    parser.add_argument("--prefill-repeat", type=int, default=5,
                        help="timed calls per side (prefill)")
    parser.add_argument("--cases", nargs="*", default=[],
                        help="run only cases whose name, shape or dtype contains one of these")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.threads < 1 or args.repeat < 1 or args.prefill_repeat < 1:
        parser.error("--threads, --repeat and --prefill-repeat must be >= 1")

    attn = _import_attn()
    torch.set_num_threads(args.threads)
    attn.set_num_threads(args.threads)
    cases = [c for c in CASES
             if not args.cases or any(s in f"{c.name} {c.shape()} {c.dtype}" for s in args.cases)]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": _cpu(),
            "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "attn": attn.__version__, "attn_module": attn.__file__,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_before": _load(), "repeat": args.repeat,
            "prefill_repeat": args.prefill_repeat}
    results = []
    for case in cases:
        result = run_case(attn, case, args.prefill_repeat if case.prefill else args.repeat)
        results.append(result)
        print(f"# {result['case']} {result['shape']} {result['dtype']}: attn "
              f"{_ms(result['attn_ms'])} ms, torch {_ms(result['torch_ms'])} ms",
              file=sys.stderr, flush=True)
    meta["loadavg_after"] = _load()

    print(f"torch {meta['torch']}, attn {meta['attn']}; {meta['cpu']}, {meta['cores']} cores, "
          f"{args.threads} threads each; OMP_WAIT_POLICY={meta['OMP_WAIT_POLICY']}; load "
          f"average {meta['loadavg_before']} before, {meta['loadavg_after']} after; "
          f"{meta['date']}\n")
    print("| case | shape | dtype | mask | attn ms | torch ms | torch path | torch/attn |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['mask']} | {_ms(r['attn_ms'])} "
              f"| {_ms(r['torch_ms'])} | {r['torch_backend']} | {r['speedup']:.2f}x |")
    faster = sum(r["speedup"] > 1 for r in results)
    print(f"\nattn faster on {faster} of {len(results)} cases (medians); max |attn - torch| / "
          f"max |torch| over all cases: {max(r['max_rel_diff'] for r in results):.2g}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
