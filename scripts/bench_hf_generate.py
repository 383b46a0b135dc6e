#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""transformers generate() with attn_implementation="attn" against "sdpa" (and "eager"), one run.

    .venv/bin/python scripts/bench_hf_generate.py [--prompt 512] [--new 64] [--batch 1]
        [--layers 4] [--hidden 2048] [--heads 16] [--kv-heads 4] [--head-dim 128]
        [--intermediate 5632] [--vocab 32000] [--dtypes bf16,fp32] [--impls attn,sdpa]
        [--repeat 3] [--threads 2] [--python-path build/python] [--json FILE]

A Llama-shaped model (by default 4 layers of Llama-3.2-1B-like width: hidden 2048, 16 query
heads, 4 kv heads of 128, SwiGLU 5632, vocab 32000; about 0.3 B parameters) with random
weights (seed 0), built once per dtype; every implementation runs the same weights
(`model.set_attn_implementation`) on the same random prompt of --prompt tokens (batch --batch,
no padding). Each repetition times, implementation after implementation (interleaved, so that
drift and other processes' load hit all alike):

  prefill  generate(max_new_tokens=1): the prompt's forward pass and one token;
  generate generate(max_new_tokens=--new), greedy, DynamicCache;
  decode   (generate - prefill) / (new - 1): one decode step, ms per token.

--omp-passive sets OMP_WAIT_POLICY=PASSIVE first: torch's OpenMP workers otherwise spin after
each parallel region on the CPUs that attn's own thread pool then wants (and on a loaded
machine two-thread OpenMP barriers get very slow), which makes every number noisier.

The tables give the median with [min, max] over --repeat repetitions (after one warm-up of
each implementation), tokens/s = batch * new / generate, and the ratio of sdpa's median time to
each implementation's (> 1: faster than sdpa). torch.set_num_threads and attn.set_num_threads
both get --threads. The greedy tokens of each implementation are compared with the first's and
the share of equal tokens is reported (random weights make near-ties likely in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--new", type=int, default=64, help="generated tokens (default 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtypes", default="bf16,fp32", help="comma list of bf16, fp32, fp16")
    p.add_argument("--impls", default="attn,sdpa", help="comma list of attn, sdpa, eager")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--omp-passive", action="store_true",
                   help="set OMP_WAIT_POLICY=PASSIVE before torch loads its OpenMP runtime: "
                        "torch's idle OpenMP threads then sleep instead of spinning on the CPUs "
                        "attn's thread pool needs (docs/performance.md measures that way)")
    p.add_argument("--python-path", default=None,
                   help="folder holding the attn package (default: build/python when built, "
                        "else an installed attn)")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.new < 2:
        p.error("--new must be >= 2 (decode time = (generate - prefill) / (new - 1))")
    for d in args.dtypes.split(","):
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r} (bf16, fp32, fp16)")
    for i in args.impls.split(","):
        if i not in ("attn", "sdpa", "eager"):
            p.error(f"unknown implementation {i!r} (attn, sdpa, eager)")
    return args


def import_attn(path):
    """attn from --python-path, else this checkout's build/python, else an installed copy."""
    folder = Path(path) if path else REPO / "build" / "python"
    if (folder / "attn" / "__init__.py").exists():
        sys.path.insert(0, str(folder))
    elif path:
        sys.exit(f"bench_hf_generate: no attn package in {folder}")
    import attn.hf

    return attn


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main(argv=None):
    args = parse_args(argv)
    if args.omp_passive:
        if "torch" in sys.modules:
            sys.exit("bench_hf_generate: --omp-passive needs to be set before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    attn = import_attn(args.python_path)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.set_num_threads(args.threads)
    attn.set_num_threads(args.threads)
    attn.hf.register()
    impls = args.impls.split(",")

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      head_dim=args.head_dim, num_hidden_layers=args.layers,
                      vocab_size=args.vocab, max_position_embeddings=max(4096, args.prompt
                                                                        + args.new),
                      rope_theta=500000.0, tie_word_embeddings=False, pad_token_id=0,
                      bos_token_id=1, eos_token_id=None)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, args.vocab, (args.batch, args.prompt), generator=g)
    mask = torch.ones_like(ids)

    results = {
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                  "intermediate": args.intermediate, "vocab": args.vocab},
        "prompt": args.prompt, "new": args.new, "batch": args.batch, "threads": args.threads,
        "repeat": args.repeat, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "transformers": transformers.__version__, "attn": attn.__version__,
        "cpu": cpu_name(), "load_before": load_average(), "runs": [],
    }

    def generate(model, n):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
            return time.perf_counter() - t0, out

    for dname in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dname])
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
        model.eval()
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        print(f"# {dname}: {params / 1e6:.0f} M parameters, built in {build_s:.1f} s",
              file=sys.stderr)
        samples = {i: {"prefill": [], "generate": []} for i in impls}
        tokens = {}
        for impl in impls:  # warm-up (and the tokens)
            model.set_attn_implementation(impl)
            generate(model, 2)
            _, tokens[impl] = generate(model, args.new)
        attn.hf.reset_counts()
        for rep in range(args.repeat):
            for impl in impls:
                model.set_attn_implementation(impl)
                samples[impl]["prefill"].append(generate(model, 1)[0])
                samples[impl]["generate"].append(generate(model, args.new)[0])
            print(f"# {dname}: repetition {rep + 1}/{args.repeat} done", file=sys.stderr)
        counts = attn.hf.counts()
        if "attn" in impls and (counts.get("attn", 0) == 0
                                or any(k.startswith("fallback") for k in counts)):
            sys.exit(f"bench_hf_generate: attn did not run every call: {counts}")
        first = tokens[impls[0]][:, args.prompt:]
        for impl in impls:
            pre = samples[impl]["prefill"]
            gen = samples[impl]["generate"]
            dec = [(gt - pt) / (args.new - 1) for gt, pt in zip(gen, pre)]
            same = (tokens[impl][:, args.prompt:] == first).float().mean().item()
            results["runs"].append({
                "dtype": dname, "impl": impl, "prefill_s": stats(pre),
                "generate_s": stats(gen), "decode_s_per_token": stats(dec),
                "tokens_per_s": args.batch * args.new / statistics.median(gen),
                "same_tokens_as_" + impls[0]: same,
            })
        del model
    results["load_after"] = load_average()

    print_table(results, impls)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_table(results, impls):
    print(f"generate(): {results['model']['layers']}-layer Llama shape (hidden "
          f"{results['model']['hidden']}, {results['model']['heads']}/"
          f"{results['model']['kv_heads']} heads of {results['model']['head_dim']}, vocab "
          f"{results['model']['vocab']}), batch {results['batch']}, prompt "
          f"{results['prompt']} + {results['new']} new tokens, {results['threads']} threads, "
          f"median [min, max] of {results['repeat']}; torch {results['torch']}, transformers "
          f"{results['transformers']}, attn {results['attn']}; OMP_WAIT_POLICY "
          f"{results['omp_wait_policy'] or 'unset'}; {results['cpu']}; load "
          f"{results['load_before']} -> {results['load_after']}")
    print()
    print("| dtype | impl | prefill s (P tokens + 1) | decode ms/token | generate s | "
          "tokens/s | sdpa time / this | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    base = {r["dtype"]: r for r in results["runs"] if r["impl"] == "sdpa"}

    def fmt(s, scale=1.0, digits=2):
        return (f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}, "
                f"{s['max'] * scale:.{digits}f}]")

    for r in results["runs"]:
        b = base.get(r["dtype"])
        ratio = (f"{b['generate_s']['median'] / r['generate_s']['median']:.3f}"
                 if b else "–")
        same = next(v for k, v in r.items() if k.startswith("same_tokens_as_"))
        print(f"| {r['dtype']} | {r['impl']} | {fmt(r['prefill_s'])} | "
              f"{fmt(r['decode_s_per_token'], 1e3, 1)} | {fmt(r['generate_s'])} | "
              f"{r['tokens_per_s']:.2f} | {ratio} | {same:.0%} |")


if __name__ == "__main__":
    main()
