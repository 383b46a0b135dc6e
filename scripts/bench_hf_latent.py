#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A decode step of a DeepSeek-V3-shaped transformers model: its own MLA attention against
attn.hf_latent.use_latent_cache (attn's layer over its latent cache), at growing context.

    PYTHONPATH=build/python .venv/bin/python scripts/bench_hf_latent.py \\
        [--contexts 512,1024,2048,4096] [--steps 5] [--layers 2] [--threads 2] \\
        [--mla auto] [--chunk 1024] [--json FILE] [--tiny]

The model: DeepSeek-V3's attention at its real dimensions (hidden 7168, 128 heads, q_lora_rank
1536, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128, YaRN factor 40 as V3 ships) with the
layer count cut to --layers, dense MLPs of intermediate size 256 instead of the MoE, a 256-token
vocabulary, bf16 weights, random init (transformers' own; RoPE's inverse frequencies kept
fp32), batch 1. One model runs both sides: transformers' own modules
(attn_implementation="sdpa": eager would materialise [128, S, T] fp32 scores in the prefill)
and, through use_latent_cache's handle (undo()/redo(), no rebuild), attn's layers over the
same weights (attn maps its bf16 copy).

Each side has its own cache. The context grows through the targets: both sides are prefilled
in chunks (--chunk tokens per call) up to the next target T, then --warmup untimed and --steps
timed decode steps of one token, each step run once per side on the same token, alternating
which side goes first, so that load from other processes hits both alike (a step at "T" sees T
to T + warmup + steps tokens). A step is one whole model forward (embedding, the layers,
lm_head) as generate() runs it; all but the attention is a few MFLOPs here. Reported per T:
median, min and max step time of both sides, the speedup (transformers median / attn median)
and its growth relative to the smallest T, the kv_b_proj re-expansion FLOPs transformers spends
per step (2·T·rk·H·(dn+dv) per layer), the cache bytes per token per layer of both sides
(transformers 5.x caches the latent too; its step rebuilds per-head K/V of every cached token,
T·H·(dn+dr+dv)·2 transient bytes per layer: what transformers 4.x kept in its cache), and the
largest logit difference between the sides on the first timed step (bf16 rounding), and the
1-minute load average when the context's steps ended (other processes on the machine).

Threads: torch.set_num_threads(--threads) and attn.set_num_threads(--threads). The load of the
machine (os.getloadavg) is printed before and after. --tiny runs a small model in seconds (a
smoke test of the script). Exit status 0 (a measurement); 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent

V3_ATTENTION = dict(hidden_size=7168, num_attention_heads=128, num_key_value_heads=128,
                    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                    qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840,
                    rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                                         original_max_position_embeddings=4096, beta_fast=32,
                                         beta_slow=1, mscale=1.0, mscale_all_dim=1.0))
TINY_ATTENTION = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=8,
                      q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                      v_head_dim=32, max_position_embeddings=4096,
                      rope_parameters=V3_ATTENTION["rope_parameters"])


def import_attn():
    import attn

    try:
        import attn.hf_latent as hf_latent
    except ModuleNotFoundError:  # a build tree made before hf_latent.py was copied into it
        attn.__path__.append(str(REPO / "python" / "attn"))
        import attn.hf_latent as hf_latent
    return attn, hf_latent


def build_model(layers: int, tiny: bool):
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    shape = TINY_ATTENTION if tiny else V3_ATTENTION
    config = DeepseekV3Config(
        vocab_size=256, intermediate_size=256, moe_intermediate_size=256,
        num_hidden_layers=layers, first_k_dense_replace=layers,  # dense MLPs only
        n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
        attn_implementation="sdpa", pad_token_id=0, bos_token_id=1, eos_token_id=None,
        tie_word_embeddings=False, **shape)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # no fp32 copy of ~190M parameters per layer
    try:
        model = DeepseekV3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(torch.bfloat16).eval()
    # RoPE inverse frequencies in fp32, as the rope init computes them: a bf16 copy (what
    # .to(bfloat16) and a bf16 default dtype make) is off by 2^-9 relative, which at position
    # 4096 turns angles by radians and puts transformers' side far from the model's math.
    model.model.rotary_emb = DeepseekV3RotaryEmbedding(config)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    return model


def run(model, handle, hf_latent, ids, contexts: List[int], steps: int, warmup: int,
        chunk: int) -> Dict[str, Any]:
    """Both sides through the contexts, interleaved: each has its own cache (transformers' K/V
    latent in a DynamicCache; attn's latent cache), both are prefilled to each target, then
    every step runs once per side (alternating which goes first) on the same token, so that
    drift in the machine's load hits both alike. `handle` is a use_latent_cache handle: undo()
    gives transformers' modules, redo() attn's (no rebuild)."""
    import torch
    from transformers import DynamicCache

    sides = ("transformers", "attn")
    caches = {side: DynamicCache(config=model.config) for side in sides}
    samples: Dict[str, Dict[int, List[float]]] = {side: {} for side in sides}
    first_logits: Dict[str, Dict[int, torch.Tensor]] = {side: {} for side in sides}
    prefill_s = {side: 0.0 for side in sides}
    loads: Dict[int, float] = {}

    def use(side: str) -> None:
        (handle.undo if side == "transformers" else handle.redo)()

    length = 0
    with torch.inference_mode():
        for target in contexts:
            for side in sides:
                use(side)
                start = time.perf_counter()
                done = length
                while done < target:
                    end = min(target, done + chunk)
                    model(ids[:, done:end], cache=caches[side], use_cache=True,
                          position_ids=torch.arange(done, end)[None])
                    done = end
                prefill_s[side] += time.perf_counter() - start
            length = target
            for side in sides:
                samples[side][target] = []
            for step in range(warmup + steps):
                token = ids[:, length:length + 1]
                order = sides if step % 2 == 0 else sides[::-1]
                for side in order:
                    use(side)
                    start = time.perf_counter()
                    out = model(token, cache=caches[side], use_cache=True,
                                position_ids=torch.tensor([[length]]))
                    elapsed = time.perf_counter() - start
                    if step == warmup:
                        first_logits[side][target] = out.logits[0, -1].double()
                    if step >= warmup:
                        samples[side][target].append(elapsed)
                length += 1
            loads[target] = os.getloadavg()[0]
            print(f"  T={target}: transformers "
                  f"{statistics.median(samples['transformers'][target]) * 1e3:.1f} ms, attn "
                  f"{statistics.median(samples['attn'][target]) * 1e3:.1f} ms (medians of "
                  f"{steps})", file=sys.stderr, flush=True)
    handle.undo()
    for side in sides:
        assert caches[side].get_seq_length() == length
    layer = caches["transformers"].layers[0]
    hf_bytes = (layer.keys.numel() * layer.keys.element_size()
                + layer.values.numel() * layer.values.element_size()) // length
    attn_caches = hf_latent.attn_caches(caches["attn"])
    for layer in caches["attn"].layers:  # transformers' Cache holds no K/V
        assert layer.keys.numel() == 0 and layer.values.numel() == 0
    return dict(
        samples=samples, first_logits=first_logits, prefill_s=prefill_s, tokens=length,
        loads=loads,
        bytes_per_token=dict(transformers=hf_bytes, attn=attn_caches[0].bytes_per_token),
        storage=dict(
            transformers="DynamicCache: kv_a_layernorm(c) and rotated k_pe, bf16",
            attn=f"attn latent cache [c | k_pe], {attn_caches[0].dtype}, capacity "
                 f"{attn_caches[0].capacity}; transformers' Cache holds 0 bytes"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="512,1024,2048,4096")
    parser.add_argument("--steps", type=int, default=5, help="timed decode steps per context")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mla", default="auto", choices=["auto", "absorbed"])
    parser.add_argument("--chunk", type=int, default=1024, help="prefill tokens per call")
    parser.add_argument("--json", metavar="FILE", help="write every sample here ('-': stdout)")
    parser.add_argument("--tiny", action="store_true", help="small dimensions (smoke test)")
    args = parser.parse_args(argv)
    try:
        contexts = sorted(int(c) for c in args.contexts.split(","))
    except ValueError:
        parser.error(f"--contexts: expected comma-separated integers, got {args.contexts!r}")
    if (not contexts or contexts[0] <= 0 or args.steps <= 0 or args.warmup < 0
            or args.layers <= 0 or args.threads <= 0 or args.chunk <= 0):
        parser.error("contexts, --steps, --layers, --threads and --chunk must be positive")

    import torch

    attn, hf_latent = import_attn()
    torch.set_num_threads(args.threads)
    attn.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    model = build_model(args.layers, args.tiny)
    build_s = time.perf_counter() - start
    cfg = model.config
    per_step = args.warmup + args.steps
    total = contexts[-1] + len(contexts) * per_step
    ids = torch.randint(2, cfg.vocab_size, (1, total), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    handle = hf_latent.use_latent_cache(model, mla=args.mla, capacity=total)
    swap_s = time.perf_counter() - start
    print(f"model built in {build_s:.1f} s, use_latent_cache in {swap_s:.1f} s",
          file=sys.stderr, flush=True)
    result = run(model, handle, hf_latent, ids, contexts, args.steps, args.warmup, args.chunk)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}",
          file=sys.stderr, flush=True)

    rk, dr = cfg.kv_lora_rank, cfg.qk_rope_head_dim
    heads, dn, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    expanded_bytes = heads * (dn + dr + dv) * 2  # transient bf16 K/V per cached token (and 4.x)
    rows = []
    base_speedup = None
    for target in contexts:
        h = result["samples"]["transformers"][target]
        a = result["samples"]["attn"][target]
        speedup = statistics.median(h) / statistics.median(a)
        base_speedup = base_speedup or speedup
        ref = result["first_logits"]["transformers"][target]
        diff = ((result["first_logits"]["attn"][target] - ref).abs().max().item()
                / ref.abs().max().item())
        rows.append(dict(
            context=target, hf_ms=[t * 1e3 for t in h], attn_ms=[t * 1e3 for t in a],
            hf_median_ms=statistics.median(h) * 1e3, attn_median_ms=statistics.median(a) * 1e3,
            speedup=speedup, speedup_growth=speedup / base_speedup,
            kv_b_expand_gflop=2 * target * rk * heads * (dn + dv) * cfg.num_hidden_layers / 1e9,
            logits_max_rel_diff=diff, loadavg_1min=result["loads"][target]))

    print(f"\nDecode step of a DeepSeek-V3-shaped model ({cfg.num_hidden_layers} layers, hidden "
          f"{cfg.hidden_size}, {heads} heads, q_lora {cfg.q_lora_rank}, kv_lora {rk}, "
          f"nope/rope/v {dn}/{dr}/{dv}, bf16, batch 1), {args.threads} threads; "
          f"transformers {__import__('transformers').__version__} (sdpa) vs "
          f"use_latent_cache(mla='{args.mla}'); ms per step, median (min-max) of {args.steps}\n")
    print("| context T | transformers ms | attn latent ms | speedup | growth vs "
          f"T={contexts[0]} | kv_b_proj re-expansion GFLOP/step | logits max rel. diff | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['context']} | {row['hf_median_ms']:.1f} ({min(row['hf_ms']):.1f}-"
              f"{max(row['hf_ms']):.1f}) | {row['attn_median_ms']:.1f} "
              f"({min(row['attn_ms']):.1f}-{max(row['attn_ms']):.1f}) | "
              f"{row['speedup']:.1f}x | {row['speedup_growth']:.2f}x | "
              f"{row['kv_b_expand_gflop']:.1f} | {row['logits_max_rel_diff']:.1e} | "
              f"{row['loadavg_1min']:.2f} |")
    print("\n| cache | bytes per token per layer | what |")
    print("|---|---:|---|")
    print(f"| transformers {__import__('transformers').__version__} | "
          f"{result['bytes_per_token']['transformers']} | {result['storage']['transformers']} |")
    print(f"| attn (use_latent_cache) | {result['bytes_per_token']['attn']} | "
          f"{result['storage']['attn']} |")
    print(f"| transient K/V rebuilt per step by transformers | {expanded_bytes} | "
          f"H·(dn+dr+dv)·2 per cached token (what transformers 4.x cached) |")
    print(f"\nprefill (chunks of {args.chunk}) to {contexts[-1]} tokens: transformers "
          f"{result['prefill_s']['transformers']:.1f} s, attn {result['prefill_s']['attn']:.1f} s; "
          f"model build {build_s:.1f} s, "
          f"use_latent_cache {swap_s:.1f} s; load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f}")
    assert result["bytes_per_token"]["attn"] == (rk + dr) * 2

    if args.json:
        report = dict(
            model=dict(layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size, heads=heads,
                       q_lora_rank=cfg.q_lora_rank, kv_lora_rank=rk, qk_nope_head_dim=dn,
                       qk_rope_head_dim=dr, v_head_dim=dv, dtype="bf16", batch=1,
                       tiny=args.tiny),
            transformers=__import__("transformers").__version__, torch=torch.__version__,
            attn=attn.__version__, threads=args.threads, mla=args.mla, steps=args.steps,
            warmup=args.warmup, chunk=args.chunk, rows=rows,
            cache_bytes_per_token_per_layer=dict(result["bytes_per_token"],
                                                 transient_expanded_kv=expanded_bytes),
            prefill_s=result["prefill_s"],
            build_s=build_s, swap_s=swap_s, loadavg_before=list(load_before),
            loadavg_after=list(load_after))
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
