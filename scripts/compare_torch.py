#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""attn against PyTorch's F.scaled_dot_product_attention on the same shapes, in one run.

    scripts/compare_torch.py [--attn build/attn] [--threads 2] [--repeat 7]
                             [--cases quick|full|decode] [--json FILE] [--markdown]
    attn bench --compare-torch [same options]

Each case is timed three ways, interleaved round by round (kernel, module, module, torch, then
again), so that drift and the load of other processes hit all of them alike:

  kernel   `attn bench kernel ... --repeat N --json`: the C++ kernel in a fresh process (the
           binary given by --attn), one warm-up call and N timed ones.
  module   attn.attention / attn.mla_attention from the Python module on torch tensors in the
           natural PyTorch layout: q [B, S, H, D], k/v [B, T, G, D] (MLA: q [B, S, H, 576],
           kv [B, T, 576], value_dim=512), all in the case's dtype; timed with
           check_finite=False and, separately, with the default check_finite=True.
  torch    torch.nn.functional.scaled_dot_product_attention on the same values in torch's own
           layout [B, H, S, D] / [B, G, T, D] (GQA through enable_gqa=True), same dtype; MLA:
           q [B, 128, S, 576] against the latent rows expanded (a stride-0 view, no copy) to 128
           heads as key, and their first 512 columns as value.

One round's sample on each side is the median of N back-to-back calls (after a 20 ms pause),
N chosen per side from a probe so that they take about 30 ms (1 for calls that long, at most
50); each side is warmed up once first. --repeat rounds; the tables give median, min and max
over the rounds. Same thread count everywhere (--threads for the binary, attn.set_num_threads and
torch.set_num_threads in here). A batch with ragged lengths is left-padded to the longest
sequence (the padding is masked: attention_mask [B, T] for attn, a boolean attn_mask
[B, 1, S, T] for torch, which also carries the causal part, bottom-right aligned); its lengths
are those of `attn bench kernel --batch B` (T - floor(b*T/(2B))), and its kernel column is that
one batched call (with a binary that has no --batch: the sum of one run per sequence).

Each case is checked once: the outputs of attn (module) and torch against softmax(q·kᵀ·scale +
mask)·v computed in float64 from the same (dtype-rounded) inputs; a maximum error over
tolerance · max|reference| (tolerance by dtype, below) is a failure: the tables are still
printed, and the exit status is 1.

PyTorch: the venv of scripts/make-torch-venv.sh (PyPI's torch, pinned in
python/requirements-torch.txt), found at $ATTN_TORCH_VENV or .venv/ in the checkout; this
script re-executes itself with that venv's python when it exists. Without it the running
interpreter's torch is used; where that has no scaled_dot_product_attention (Debian 12's 1.13),
the torch column times the matmul-softmax-matmul formula instead and says so (f16 in fp32
there, as 1.13 has no f16 matmul on the CPU). The attn module is imported from --module, else
the python/ folder beside the --attn binary, else build/python.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REEXEC_ENV = "ATTN_COMPARE_TORCH_REEXEC"
# Pause before each in-process timed call: the idle workers of whichever library ran last
# (libgomp spins a while after a parallel region) must not share the cores with the next call.
PAUSE_S = 0.02
# One round's sample on each side is the median of enough back-to-back calls for this much
# work (at most MAX_INNER calls; at least one).
ROUND_S = 0.03
MAX_INNER = 50
# Maximum error allowed against the float64 reference, as a fraction of max|reference|.
TOLERANCE = {"f32": 1e-4, "f16": 4e-3, "bf16": 3e-2}


@dataclass(frozen=True)
class Case:
    name: str
    variant: str  # "gqa" (MHA/GQA/MQA) or "mla" (absorbed: one latent row per token)
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    q_len: int
    kv_len: int  # T: the longest sequence
    causal: bool
    dtype: str  # "f32", "f16", "bf16"
    # A ragged batch: each sequence's length (its most recent tokens; left padding up to
    # kv_len). Empty: batch 1 of kv_len tokens.
    lengths: tuple[int, ...] = ()

    @property
    def batch(self) -> int:
        return len(self.lengths) or 1

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return self.lengths or (self.kv_len,)

    @property
    def decode(self) -> bool:
        return self.q_len <= 8

    def shape(self) -> str:
        batch = f"B{self.batch} " if self.batch > 1 else ""
        kv = f"G{self.kv_heads}" if self.variant == "gqa" else "latent"
        dims = f"D{self.head_dim}" + (f"/{self.v_head_dim}" if self.v_head_dim != self.head_dim
                                      else "")
        tokens = (f"T{min(self.lengths)}..{self.kv_len}" if self.lengths else f"T{self.kv_len}")
        return (f"{batch}H{self.heads} {kv} {dims} S{self.q_len} {tokens}"
                f"{' causal' if self.causal else ''}")

    def kv_bytes(self) -> int:
        """Unique K/V bytes the call must read (padding not counted)."""
        size = 4 if self.dtype == "f32" else 2
        width = self.head_dim if self.variant == "mla" else self.head_dim + self.v_head_dim
        return sum(self.seq_lens) * self.kv_heads * width * size


def gqa(name, h, g, s, t, dtype, causal=False, d=128, lengths=()):
    return Case(name, "gqa", h, g, d, d, s, t, causal, dtype, tuple(lengths))


def mla(name, h, s, t, dtype, causal=False):
    return Case(name, "mla", h, 1, 576, 512, s, t, causal, dtype)




def ragged(batch: int, t: int) -> tuple[int, ...]:
    """`attn bench kernel --batch`'s lengths: sequence b has T - floor(b*T/(2B)) keys."""
    return tuple(t - (b * t) // (2 * batch) for b in range(batch))


FULL_CASES = [
    gqa("decode mha f32", 32, 32, 1, 16384, "f32"),
    gqa("decode mha f16", 32, 32, 1, 16384, "f16"),
    gqa("decode mha bf16", 32, 32, 1, 16384, "bf16"),
    gqa("decode gqa bf16", 32, 8, 1, 16384, "bf16"),
    gqa("decode gqa f32", 32, 8, 1, 4096, "f32"),
    mla("decode mla bf16", 128, 1, 4096, "bf16"),
    gqa("spec-decode gqa bf16", 32, 8, 8, 4096, "bf16", causal=True),
    gqa("ragged b8 gqa bf16", 32, 8, 4, 4096, "bf16", causal=True, lengths=ragged(8, 4096)),
    gqa("prefill gqa f32", 32, 8, 512, 512, "f32"),
]
# The same mechanisms (ragged batch with mask and causal, non-causal prefill, MLA) at sizes that
# run in seconds. Three cases: tests/python/test_bench_cli.py counts them.
QUICK_CASES = [
    gqa("ragged b4 gqa bf16", 8, 2, 2, 512, "bf16", causal=True, d=64,
        lengths=ragged(4, 512)),
    gqa("prefill gqa f32", 8, 2, 128, 128, "f32", d=64),
    mla("decode mla bf16", 16, 1, 256, "bf16"),
]
CASE_SETS = {
    "full": FULL_CASES,
    "quick": QUICK_CASES,
    "decode": [c for c in FULL_CASES if c.decode],
}


# ---- interpreter, binary, module -----------------------------------------------------------

def venv_dir(args) -> Path | None:
    if args.no_venv:
        return None
    chosen = args.venv or os.environ.get("ATTN_TORCH_VENV")
    path = Path(chosen) if chosen else REPO / ".venv"
    if (path / "bin" / "python").exists():
        return path
    if args.venv:
        sys.exit(f"compare_torch: --venv {args.venv}: no bin/python there "
                 f"(make it with scripts/make-torch-venv.sh {args.venv})")
    return None


def maybe_reexec(args) -> None:
    """Runs this script again under the torch venv's python, when there is one."""
    venv = venv_dir(args)
    if venv is None or os.environ.get(REEXEC_ENV):
        return
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    python = str(venv / "bin" / "python")
    env = dict(os.environ, **{REEXEC_ENV: "1"})
    sys.stdout.flush()
    os.execve(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]], env)


def attn_binary(explicit: str | None) -> str:
    if explicit:
        return explicit
    for candidate in (os.environ.get("ATTN_BIN"), REPO / "build" / "attn"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("compare_torch: no attn binary (pass --attn PATH or set ATTN_BIN)")


def import_attn(explicit: str | None, binary: str):
    """The attn module, or None (with the reason printed) where it cannot be imported."""
    candidates = [Path(explicit)] if explicit else [Path(binary).resolve().parent / "python",
                                                    REPO / "build" / "python"]
    for folder in candidates:
        if (folder / "attn" / "__init__.py").exists():
            sys.path.insert(0, str(folder))
            break
    try:
        import attn
    except ImportError as error:
        print(f"compare_torch: the attn module cannot be imported ({error}; looked in "
              f"{', '.join(map(str, candidates))}): no module columns, no output check",
              file=sys.stderr)
        return None
    return attn


# ---- inputs ----------------------------------------------------------------------------------

class Inputs:
    """One case's inputs in both layouts (same values), plus the float64 reference."""

    def __init__(self, torch, case: Case, sdpa_ok: bool):
        self.case = case
        dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[case.dtype]
        # The naive fallback formula runs f16 in fp32 (Debian's 1.13 has no f16 CPU matmul).
        self.torch_dtype = dt if (sdpa_ok or case.dtype != "f16") else torch.float32
        gen = torch.Generator().manual_seed(1)
        b, s, t, h, g = case.batch, case.q_len, case.kv_len, case.heads, case.kv_heads

        def uniform(*shape):  # [-1, 1), like `attn bench kernel`'s inputs
            return (torch.rand(*shape, generator=gen) * 2 - 1).to(dt)

        self.scale = 1.0 / math.sqrt(case.head_dim)
        # attn's layout: token-major, as a PyTorch model holds q and a [B, T, G, D] cache.
        self.q = uniform(b, s, h, case.head_dim)
        if case.variant == "mla":
            self.kv = uniform(b, t, case.head_dim)
            self.k = self.v = None
        else:
            self.k = uniform(b, t, g, case.head_dim)
            self.v = uniform(b, t, g, case.v_head_dim)
        # Key padding (left: sequence i holds the last lengths[i] slots) and causal, bottom-right.
        keep = None
        self.key_mask = None
        if case.lengths:
            lengths = torch.tensor(case.lengths)
            self.key_mask = torch.arange(t)[None, :] >= (t - lengths)[:, None]  # [B, T]
            keep = self.key_mask[:, None, None, :].expand(b, 1, s, t)
        if case.causal:
            slot = torch.arange(s)[:, None] + (t - s)
            visible = torch.arange(t)[None, :] <= slot  # [S, T]
            keep = visible[None, None] if keep is None else keep & visible[None, None]
        self.keep = None if keep is None else keep.expand(b, 1, s, t).contiguous()

        # torch's layout: [B, H, S, D] queries, [B, G, T, D] keys/values (copies, contiguous).
        self.tq = self.q.transpose(1, 2).contiguous().to(self.torch_dtype)
        if case.variant == "mla":
            latent = self.kv.to(self.torch_dtype)[:, None]  # [B, 1, T, 576]
            self.tk = latent.expand(b, h, t, case.head_dim)  # a view: no copy
            self.tv = self.tk[..., :case.v_head_dim]
        else:
            self.tk = self.k.transpose(1, 2).contiguous().to(self.torch_dtype)
            self.tv = self.v.transpose(1, 2).contiguous().to(self.torch_dtype)

    def reference(self, torch):
        """softmax(q·kᵀ·scale + mask)·v in float64, [B, S, H, Dv], one (batch, kv head) at a
        time (the float64 copy of a whole 16k-token cache would be a gigabyte)."""
        c = self.case
        out = torch.empty(c.batch, c.q_len, c.heads, c.v_head_dim, dtype=torch.float64)
        group = c.heads // c.kv_heads
        for b in range(c.batch):
            for g in range(c.kv_heads):
                if c.variant == "mla":
                    k = self.kv[b].double()
                    v = k[:, :c.v_head_dim]
                else:
                    k = self.k[b, :, g].double()
                    v = self.v[b, :, g].double()
                q = self.q[b, :, g * group:(g + 1) * group].double()  # [S, r, D]
                scores = torch.einsum("srd,td->rst", q, k) * self.scale
                if self.keep is not None:
                    scores = scores.masked_fill(~self.keep[b, 0][None], float("-inf"))
                p = torch.softmax(scores, dim=-1)
                out[b, :, g * group:(g + 1) * group] = torch.einsum("rst,td->srd", p, v)
        return out


# ---- the three sides -------------------------------------------------------------------------

def kernel_commands(binary: str, case: Case, threads: int, batch_flag: bool,
                    layout: str | None) -> list[list[str]]:
    """The `attn bench kernel` command(s) of a case, without --repeat: one, with --batch for a
    ragged batch where the binary has it; else one per sequence."""
    def command(length: int, batch: int) -> list[str]:
        cmd = [binary, "bench", "kernel", "--variant", case.variant, "--heads", str(case.heads),
               "--kv-heads", str(case.kv_heads), "--head-dim", str(case.head_dim),
               "--v-head-dim", str(case.v_head_dim), "--q-len", str(case.q_len), "--kv-len",
               str(length), "--dtype", case.dtype, "--threads", str(threads), "--json"]
        if batch > 1:
            cmd += ["--batch", str(batch)]
        if layout and case.variant == "gqa":
            cmd += ["--layout", layout]
        if case.causal:
            cmd.append("--causal")
        return cmd

    if case.batch > 1 and batch_flag and case.lengths == ragged(case.batch, case.kv_len):
        return [command(case.kv_len, case.batch)]
    return [command(length, 1) for length in case.seq_lens]


def binary_flags(binary: str) -> str:
    """`attn bench kernel --help`: which flags this binary has."""
    proc = subprocess.run([binary, "bench", "kernel", "--help"], capture_output=True, text=True)
    return proc.stdout


def run_kernel(commands: list[list[str]], inner: list[int]) -> tuple[float, list[dict]]:
    """One round of the kernel: each sequence's command with --repeat inner[i] (one warm-up,
    then that many timed calls); the sum over sequences of their medians, and each run's
    JSON."""
    results = []
    for cmd, count in zip(commands, inner):
        cmd = [*cmd, "--repeat", str(count)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"compare_torch: {' '.join(cmd)} failed ({proc.returncode}):\n"
                     f"{proc.stderr}")
        results.append(json.loads(proc.stdout))
    return sum(r["median_s"] for r in results), results


def module_call(attn, x: Inputs, check_finite: bool):
    c = x.case
    mask = None if x.key_mask is None else x.key_mask
    if c.variant == "mla":
        return lambda: attn.mla_attention(x.q, x.kv, value_dim=c.v_head_dim, causal=c.causal,
                                          scale=x.scale, attention_mask=mask,
                                          check_finite=check_finite)
    return lambda: attn.attention(x.q, x.k, x.v, causal=c.causal, scale=x.scale,
                                  attention_mask=mask, check_finite=check_finite)


def sdpa_supports_gqa(torch) -> bool:
    f = torch.nn.functional.scaled_dot_product_attention
    q = torch.zeros(1, 2, 1, 4)
    k = torch.zeros(1, 1, 1, 4)
    try:
        f(q, k, k, enable_gqa=True)
    except (TypeError, RuntimeError):
        return False
    return True


class TorchSide:
    """How torch runs a case: SDPA (enable_gqa or repeat_interleave) or, without SDPA, the
    matmul-softmax-matmul formula."""

    def __init__(self, torch):
        self.torch = torch
        self.sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
        self.gqa_flag = self.sdpa is not None and sdpa_supports_gqa(torch)

    def describe(self) -> str:
        if self.sdpa is None:
            return ("q·kᵀ·scale, masked_fill, softmax, ·v (this torch has no "
                    "scaled_dot_product_attention; run scripts/make-torch-venv.sh)")
        gqa = ("GQA via enable_gqa=True" if self.gqa_flag
               else "GQA via repeat_interleave of k/v inside the timed call")
        return f"F.scaled_dot_product_attention, {gqa}"

    def backend(self, x: Inputs) -> str:
        """Which SDPA implementation torch picks for this case (its dispatcher's choice)."""
        torch = self.torch
        if self.sdpa is None:
            return "naive"
        choose = getattr(torch, "_fused_sdp_choice", None)
        if choose is None:
            return "?"
        kwargs = {"attn_mask": x.keep, "scale": x.scale}
        k, v = x.tk, x.tv
        if x.case.heads != x.case.kv_heads and x.case.variant == "gqa":
            if self.gqa_flag:
                kwargs["enable_gqa"] = True
            else:
                r = x.case.heads // x.case.kv_heads
                k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        try:
            number = int(choose(x.tq, k, v, **kwargs))
        except (TypeError, RuntimeError):
            return "?"
        names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
        return names.get(number, str(number))

    def call(self, x: Inputs):
        torch, c = self.torch, x.case
        q, k, v, keep = x.tq, x.tk, x.tv, x.keep
        repeat = c.heads // c.kv_heads if c.variant == "gqa" else 1
        if self.sdpa is not None:
            sdpa = self.sdpa
            if repeat > 1 and self.gqa_flag:
                return lambda: sdpa(q, k, v, attn_mask=keep, scale=x.scale, enable_gqa=True)
            if repeat > 1:
                return lambda: sdpa(q, k.repeat_interleave(repeat, dim=1),
                                    v.repeat_interleave(repeat, dim=1), attn_mask=keep,
                                    scale=x.scale)
            return lambda: sdpa(q, k, v, attn_mask=keep, scale=x.scale)

        def naive():
            kk = k.repeat_interleave(repeat, dim=1) if repeat > 1 else k
            vv = v.repeat_interleave(repeat, dim=1) if repeat > 1 else v
            scores = (q @ kk.transpose(-2, -1)) * x.scale
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            return torch.softmax(scores, dim=-1) @ vv
        return naive


# ---- measuring -------------------------------------------------------------------------------

def burst(fn, count: int) -> list[float]:
    """Seconds of `count` back-to-back calls, after a pause."""
    time.sleep(PAUSE_S)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
    return times


def inner_count(seconds: float) -> int:
    """Calls per round for a call of about `seconds`: enough for ROUND_S of work."""
    return max(1, min(MAX_INNER, math.ceil(ROUND_S / max(seconds, 1e-7))))


def stats(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples),
            "max_s": max(samples)}


def measure(case: Case, torch, attn, side: TorchSide, binary: str, threads: int,
            repeat: int, batch_flag: bool, layout: str | None) -> dict:
    x = Inputs(torch, case, side.sdpa is not None)
    commands = kernel_commands(binary, case, threads, batch_flag, layout)
    torch_fn = side.call(x)
    calls = {}
    if attn is not None:
        calls["module_nocheck"] = module_call(attn, x, check_finite=False)
        calls["module"] = module_call(attn, x, check_finite=True)
    calls["torch"] = torch_fn

    # Warm-up, and the one correctness check, on the warm-up outputs.
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in calls.items()}
    ref = x.reference(torch)
    scale = ref.abs().max().item()
    tolerance = TOLERANCE[case.dtype] * scale
    torch_out = outputs["torch"].transpose(1, 2).double()
    check = {"max_abs_ref": scale, "tolerance": tolerance,
             "torch_err": (torch_out - ref).abs().max().item()}
    if attn is not None:
        module_out = torch.as_tensor(outputs["module"]).double()
        check["attn_err"] = (module_out - ref).abs().max().item()
        check["attn_nocheck_err"] = (torch.as_tensor(outputs["module_nocheck"]).double()
                                     - ref).abs().max().item()
        check["attn_vs_torch"] = (module_out - torch_out).abs().max().item()
        check["ok"] = max(check["attn_err"], check["attn_nocheck_err"]) <= tolerance
    else:
        check["ok"] = True
    check["torch_ok"] = check["torch_err"] <= tolerance
    del outputs, ref, torch_out

    # How many calls make one round's sample (their median) on each side: calls of well under
    # a millisecond are timed several times back to back, as `attn bench kernel --repeat` does.
    _, probe = run_kernel(commands, [3] * len(commands))
    if len(commands) == 1 and case.batch > 1 and probe[0].get("kv_lens") != list(case.lengths):
        sys.exit(f"compare_torch: {case.name}: the binary's --batch lengths "
                 f"{probe[0].get('kv_lens')} are not the case's {list(case.lengths)}")
    inner = {"kernel": [inner_count(r["median_s"]) for r in probe]}
    with torch.inference_mode():
        for name, fn in calls.items():
            inner[name] = inner_count(statistics.median(burst(fn, 3)))

    samples = {"kernel": [], **{name: [] for name in calls}}
    raw = {name: [] for name in samples}
    kernel_runs = []
    with torch.inference_mode():
        for _ in range(repeat):
            gc.collect()
            seconds, runs = run_kernel(commands, inner["kernel"])
            samples["kernel"].append(seconds)
            raw["kernel"].append([r["times_s"] for r in runs])
            kernel_runs.append(runs)
            for name, fn in calls.items():
                times = burst(fn, inner[name])
                samples[name].append(statistics.median(times))
                raw[name].append(times)

    first = kernel_runs[0]
    flops = sum(r["flops"] for r in first)
    cli_kv_bytes = sum(r["kv_bytes"] for r in first)
    result = {
        "case": asdict(case), "name": case.name, "shape": case.shape(), "batch": case.batch,
        "dtype": case.dtype, "torch_dtype": str(x.torch_dtype).replace("torch.", ""),
        "torch_backend": side.backend(x), "flops": flops, "kv_bytes": case.kv_bytes(),
        "cli_kv_bytes": cli_kv_bytes, "inner": inner, "samples_s": samples, "raw_s": raw,
        "stats": {name: stats(values) for name, values in samples.items()},
        "check": check, "kernel_runs": kernel_runs,
    }
    return result


# ---- reporting -------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    value = 1e3 * seconds
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def cell(result: dict, name: str) -> str:
    s = result["stats"].get(name)
    if s is None:
        return "n/a"
    return f"{ms(s['median_s'])} ({ms(s['min_s'])}–{ms(s['max_s'])})"


def ratio(result: dict, top: str, bottom: str) -> str:
    a, b = result["stats"].get(top), result["stats"].get(bottom)
    if a is None or b is None:
        return "n/a"
    return f"{a['median_s'] / b['median_s']:.2f}×"


def bandwidth(result: dict) -> str:
    if not result["case"]["q_len"] <= 8:
        return "—"
    parts = []
    for name in ("kernel", "module_nocheck", "torch"):
        s = result["stats"].get(name)
        parts.append("n/a" if s is None else f"{result['kv_bytes'] / s['median_s'] / 1e9:.1f}")
    return " / ".join(parts)


def errors(result: dict) -> str:
    c = result["check"]
    attn_err = f"{c['attn_err']:.1e}" if "attn_err" in c else "n/a"
    mark = "" if c["ok"] else " **FAIL**"
    return f"{attn_err} / {c['torch_err']:.1e} (tol {c['tolerance']:.1e}){mark}"


COLUMNS = ["case", "shape", "dtype", "kernel ms", "module ms (check_finite=False)",
           "module ms (check_finite=True)", "torch ms", "torch path", "module/kernel",
           "module (check)/kernel", "torch/kernel", "torch/module",
           "K/V GB/s kernel / module / torch", "max abs err attn / torch"]


def row(result: dict) -> list[str]:
    kernel_note = " Σ" if len(result["kernel_runs"][0]) > 1 else ""
    torch_path = result["torch_backend"]
    if result["torch_dtype"] != {"f32": "float32", "f16": "float16",
                                 "bf16": "bfloat16"}[result["dtype"]]:
        torch_path += f" ({result['torch_dtype']})"
    return [result["name"], result["shape"], result["dtype"],
            cell(result, "kernel") + kernel_note, cell(result, "module_nocheck"),
            cell(result, "module"), cell(result, "torch"), torch_path,
            ratio(result, "module_nocheck", "kernel"), ratio(result, "module", "kernel"),
            ratio(result, "torch", "kernel"), ratio(result, "torch", "module_nocheck"),
            bandwidth(result), errors(result)]


def print_text(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    print("  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def print_markdown(rows: list[list[str]]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("| " + " | ".join("---" for _ in COLUMNS) + " |")
    for r in rows:
        print("| " + " | ".join(v.replace("|", "\\|") for v in r) + " |")


def legacy_row(result: dict, threads: int) -> dict:
    """One line of --json-out (read by bench_report.py and roofline_plot.py): the kernel JSON as
    "attn" (for a batch, summed over its sequences), attn_s/torch_s medians, speedup =
    torch_s / attn_s."""
    runs = result["kernel_runs"][0]
    kernel = dict(runs[0])
    attn_s = result["stats"]["kernel"]["median_s"]
    torch_s = result["stats"]["torch"]["median_s"]
    if len(runs) > 1:
        kernel.update(batch=len(runs), kv_lens=[r["kv_len"] for r in runs],
                      kv_len=max(r["kv_len"] for r in runs), flops=result["flops"],
                      kv_bytes=result["cli_kv_bytes"])
    kernel.update(median_s=attn_s, min_s=result["stats"]["kernel"]["min_s"],
                  gflops=kernel["flops"] / attn_s / 1e9, gbps=kernel["kv_bytes"] / attn_s / 1e9,
                  times_s=result["samples_s"]["kernel"])
    line = {"case": result["name"], "threads": threads, "attn": kernel, "attn_s": attn_s,
           "torch_s": torch_s, "torch_dtype": result["torch_dtype"],
           "torch_backend": result["torch_backend"], "attn_gflops": kernel["gflops"],
           "torch_gflops": result["flops"] / torch_s / 1e9, "speedup": torch_s / attn_s}
    for name in ("module_nocheck", "module"):
        if name in result["stats"]:
            line[f"{name}_s"] = result["stats"][name]["median_s"]
    return line


def cpu_capability(torch) -> str:
    cpu = getattr(torch.backends, "cpu", None)
    return cpu.get_cpu_capability() if hasattr(cpu, "get_cpu_capability") else "?"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the top of scripts/compare_torch.py for what each column measures.")
    parser.add_argument("--attn", help="attn binary (default $ATTN_BIN or build/attn)")
    parser.add_argument("--threads", type=int, default=2, help="threads on every side (2)")
    parser.add_argument("--repeat", type=int, default=7,
                        help="interleaved rounds; each side's median, min and max over them (7)")
    parser.add_argument("--cases", choices=sorted(CASE_SETS), default="full",
                        help="quick: small shapes, seconds; decode: the full set's S <= 8 cases")
    parser.add_argument("--json", dest="json_file", metavar="FILE",
                        help="write every raw sample and the kernel JSON of every run here")
    parser.add_argument("--json-out", metavar="FILE",
                        help="one JSON line per case for bench_report.py / roofline_plot.py")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown (for docs/performance.md)")
    parser.add_argument("--module", metavar="DIR",
                        help="folder holding the attn package (default: python/ beside the "
                             "binary, else build/python)")
    parser.add_argument("--venv", metavar="DIR",
                        help="torch venv (default $ATTN_TORCH_VENV or .venv/)")
    parser.add_argument("--no-venv", action="store_true",
                        help="use this interpreter's torch even where the venv exists")
    parser.add_argument("--kernel-layout", choices=["head-major", "token-major"],
                        help="`attn bench kernel --layout` for the gqa cases (default: the "
                             "binary's own, head-major; the module reads token-major)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for every side: OpenMP workers sleep at "
                             "once instead of spinning (torch's pool, and oneDNN's inside attn, "
                             "lose less to other processes on a busy machine)")
    args = parser.parse_args()
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be >= 1")
    maybe_reexec(args)

    binary = attn_binary(args.attn)
    if args.omp_passive:  # read by libgomp when it loads: before torch and attn, and inherited
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # by the kernel's processes
    try:
        import torch
    except ImportError:
        sys.exit("compare_torch: no torch here; make one with scripts/make-torch-venv.sh")
    attn = import_attn(args.module, binary)
    torch.set_num_threads(args.threads)
    if attn is not None:
        attn.set_num_threads(args.threads)
    side = TorchSide(torch)
    cases = CASE_SETS[args.cases]
    flags = binary_flags(binary)
    batch_flag = "--batch" in flags
    if args.kernel_layout and "--layout" not in flags:
        sys.exit(f"compare_torch: {binary} bench kernel has no --layout")

    load_before = os.getloadavg()
    started = time.time()
    results = []
    for case in cases:
        results.append(measure(case, torch, attn, side, binary, args.threads, args.repeat,
                               batch_flag, args.kernel_layout))
        print(f"  {case.name} done ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    rows = [row(r) for r in results]
    backend = attn.backend() if attn is not None else "?"
    module_from = str(Path(attn.__file__).parent.parent) if attn is not None else "not imported"
    print(f"attn (backend {backend}; module from {module_from}) vs torch {torch.__version__} "
          f"(from {sys.prefix}, CPU capability "
          f"{cpu_capability(torch)}): "
          f"{side.describe()}")
    omp = os.environ.get("OMP_WAIT_POLICY")
    omp_note = f" (OMP_WAIT_POLICY={omp})" if omp else ""
    print(f"{args.threads} thread(s) everywhere{omp_note}; {args.repeat} interleaved rounds "
          f"(kernel, module, module with check, torch), each side's sample per round the median of "
          f"enough calls for ~{1e3 * ROUND_S:.0f} ms; milliseconds as median (min–max) over "
          f"the rounds.")
    (print_markdown if args.markdown else print_text)(rows)
    print("kernel: `attn bench kernel` in a fresh process per round (a batch in one --batch "
          "call; Σ: a binary without --batch, one run per sequence, summed). module: "
          "attn.attention / attn.mla_attention on [B, S, H, D] torch tensors (\"module\" in "
          "ratios and GB/s: with check_finite=False). torch path: the SDPA "
          "implementation torch's dispatcher picks. Ratios are of medians: module/kernel is "
          "the cost of the entry point; torch/kernel and torch/module > 1 mean attn is "
          "faster (= the attn/torch speedup). K/V GB/s (S <= 8): unique K/V bytes "
          "(padding not counted) over the median. Errors: max |x - ref| against float64, "
          "tolerance = " + ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items())
          + " × max|ref|.")
    print(f"Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} CPUs, shared with other processes); {time.time() - started:.0f} s.")

    meta = {"torch": torch.__version__, "torch_prefix": sys.prefix, "torch_side":
            side.describe(), "attn_binary": binary, "attn_module": module_from,
            "backend": backend, "threads": args.threads, "repeat": args.repeat,
            "cases": args.cases, "load_before": load_before, "load_after": load_after,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "pause_s": PAUSE_S, "round_s": ROUND_S, "max_inner": MAX_INNER,
            "tolerance": TOLERANCE,
            "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if args.json_file:
        with open(args.json_file, "w") as out:
            json.dump({"meta": meta, "cases": results}, out, indent=1)
    if args.json_out:
        with open(args.json_out, "w") as out:
            for result in results:
                out.write(json.dumps(legacy_row(result, args.threads)) + "\n")

    failed = [r["name"] for r in results if not r["check"]["ok"]]
    if failed:
        print(f"compare_torch: attn's output is off the float64 reference in: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    off = [r["name"] for r in results if not r["check"]["torch_ok"]]
    if off:
        print(f"compare_torch: note: torch's own output is off the float64 reference by more "
              f"than the tolerance in: {', '.join(off)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
