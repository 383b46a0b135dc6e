# SPDX-License-Identifier: Apache-2.0
"""`mpirun -np N attn forward --parallel tp|dp|cp` against one process (issue 14).

Each case writes one layer's random weights and an input batch (ragged by left padding), runs
`attn forward` once in a single process (the oracle: the layer every other test checks against
PyTorch and float64 references) and then under mpirun with 2 and 4 ranks in each mode; the
output file rank 0 writes must equal the single-process one to fp32 rounding. Also: peak
resident memory per rank under tp shrinks with the world, and bad runs (heads a world cannot
split, ranks that disagree, a rank that cannot read its input) exit nonzero on every rank with
the reason, and write no output file.

Environment: ATTN_BIN (the CLI), ATTN_MPIEXEC (default: mpirun on PATH), ATTN_MPIEXEC_FLAGS
(extra launcher flags, space separated). Running as root needs OpenMPI's two
OMPI_ALLOW_RUN_AS_ROOT variables, which the tests set for their own children (with the MCA
settings of CMakeLists.txt's ATTN_MPI_TEST_ENV when the environment has none).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent.parent
CONFIGS = REPO / "configs"
TIMEOUT_S = 300


def attn_bin() -> Path:
    env = os.environ.get("ATTN_BIN")
    path = Path(env) if env else REPO / "build" / "attn"
    if not path.is_file():
        pytest.fail(f"attn binary not found at {path} (build it or set ATTN_BIN)", pytrace=False)
    return path


def mpiexec() -> list[str]:
    exe = os.environ.get("ATTN_MPIEXEC") or shutil.which("mpirun")
    if not exe:
        pytest.fail("mpirun not found (apt-get install openmpi-bin, or set ATTN_MPIEXEC)",
                    pytrace=False)
    flags = os.environ.get("ATTN_MPIEXEC_FLAGS", "--oversubscribe")
    return [exe, *shlex.split(flags)]


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # A bare container: no ssh/rsh, no network, no process_vm_readv (CMakeLists.txt says why).
    env.setdefault("OMPI_MCA_plm", "isolated")
    env.setdefault("OMPI_MCA_btl", "self,vader")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    # One thread per rank: the ranks share this machine's cores.
    env["ATTN_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=mpi_env(), **kwargs)


def run_ranks(world: int, args) -> subprocess.CompletedProcess:
    return run([*mpiexec(), "-np", str(world), *args])


def make_case(tmp: Path, config: str, batch: int, tokens: int, seed: int) -> tuple[Path, Path]:
    weights = tmp / "w.safetensors"
    proc = run([attn_bin(), "random-weights", "--config", CONFIGS / config, "--output", weights,
                "--seed", seed])
    assert proc.returncode == 0, proc.stderr
    hidden = json.loads((CONFIGS / config).read_text())["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, tokens, hidden, generator=gen) * 2 - 1
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    for b in range(1, batch):  # left padding, a different amount per sequence
        mask[b, : min(b * 2, tokens - 1)] = 0
    inp = tmp / "in.safetensors"
    save_file({"hidden_states": x.contiguous(), "attention_mask": mask}, str(inp))
    return weights, inp


def forward_args(config: str, weights: Path, inp: Path, out: Path, extra=()) -> list:
    return [attn_bin(), "forward", "--config", CONFIGS / config, "--weights", weights,
            "--input", inp, "--output", out, *extra]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


CASES = [
    # config, batch, tokens, forward flags
    ("tiny-llama31.json", 3, 12, ["--prefill", "7"]),  # GQA 8/2: kv heads replicated at 4
    ("tiny-gpt-oss.json", 2, 11, ["--prefill", "6"]),  # sinks, window on alternate layers
    ("tiny-mistral.json", 3, 9, []),  # sliding window 5, prefill only
    ("tiny-deepseek-v3.json", 3, 10, ["--prefill", "6", "--mla", "absorbed"]),
    ("tiny-deepseek-v2-lite.json", 2, 9, ["--prefill", "5", "--mla", "naive"]),
]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """Each case's weights, input and one-process output, made once for every mode and world."""
    made = {}

    def get(config, batch, tokens, extra):
        if config not in made:
            tmp = tmp_path_factory.mktemp(config.removesuffix(".json"))
            weights, inp = make_case(tmp, config, batch, tokens, seed=len(made))
            single = tmp / "single.safetensors"
            proc = run(forward_args(config, weights, inp, single, extra))
            assert proc.returncode == 0, proc.stderr
            made[config] = (weights, inp, single)
        return made[config]

    return get


# Every case at 2 ranks; at 4 (kv heads replicated, one head per rank for the 4-head MLA
# models) one GQA and one MLA case, which keeps the README's test command within its budget.
SPLITS = [(mode, world, case) for mode in ("tp", "dp", "cp") for world in (2, 4)
          for case in CASES if world == 2 or case[0] in ("tiny-llama31.json",
                                                          "tiny-deepseek-v3.json")]


@pytest.mark.parametrize("mode,world,case", SPLITS,
                         ids=[f"{m}-np{w}-{c[0].removesuffix('.json')}" for m, w, c in SPLITS])
def test_ranks_write_the_single_process_output(tmp_path, single_process, mode, world, case):
    config, batch, tokens, extra = case
    weights, inp, single = single_process(config, batch, tokens, extra)
    split = tmp_path / "split.safetensors"
    proc = run_ranks(world, forward_args(config, weights, inp, split,
                                         [*extra, "--parallel", mode]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = load_file(str(single))["attn_output"]
    got = load_file(str(split))["attn_output"]
    assert got.shape == expected.shape
    # Summation order differs (heads summed across ranks, softmax states merged): fp32 rounding.
    assert relative_error(got, expected) < 2e-5, (mode, world)


def test_tp_world_that_does_not_divide_heads_fails_on_every_rank(tmp_path):
    config = "tiny-deepseek-v3.json"  # 4 heads
    weights, inp = make_case(tmp_path, config, 1, 4, seed=0)
    out = tmp_path / "out.safetensors"
    proc = run_ranks(3, forward_args(config, weights, inp, out, ["--parallel", "tp"]))
    assert proc.returncode != 0
    assert proc.stderr.count("3 ranks do not divide 4 query heads") == 3, proc.stderr
    assert not out.exists()


def test_a_rank_that_cannot_read_its_input_fails_every_rank(tmp_path):
    config = "tiny-llama31.json"
    weights, inp = make_case(tmp_path, config, 1, 4, seed=0)
    out = tmp_path / "out.safetensors"
    # Rank 1 is handed a file that does not exist; rank 0 a good one.
    wrapper = tmp_path / "rank.sh"
    wrapper.write_text('#!/bin/sh\nif [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then IN="$1.missing"; '
                       'else IN="$1"; fi\nshift\nexec "$@" --input "$IN"\n')
    wrapper.chmod(0o755)
    args = [a for a in forward_args(config, weights, inp, out, ["--parallel", "dp"])]
    i = args.index("--input")
    del args[i:i + 2]
    proc = run_ranks(2, [wrapper, inp, *args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "missing" in proc.stderr
    assert "rank 1 of 2 failed" in proc.stderr  # what rank 0 says
    assert not out.exists()


def test_ranks_that_disagree_on_the_config_fail(tmp_path):
    weights, inp = make_case(tmp_path, "tiny-llama31.json", 1, 4, seed=0)
    other = tmp_path / "other.json"
    changed = json.loads((CONFIGS / "tiny-llama31.json").read_text())
    changed["rope_theta"] = 10000.0
    other.write_text(json.dumps(changed))
    out = tmp_path / "out.safetensors"
    wrapper = tmp_path / "rank.sh"
    wrapper.write_text(f'#!/bin/sh\nif [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then C="{other}"; '
                       f'else C="{CONFIGS / "tiny-llama31.json"}"; fi\nexec "$@" --config "$C"\n')
    wrapper.chmod(0o755)
    args = [attn_bin(), "forward", "--weights", weights, "--input", inp, "--output", out,
            "--parallel", "cp"]
    proc = run_ranks(2, [wrapper, *args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("ranks disagree on the model config") == 2, proc.stderr
    assert not out.exists()


def test_parallel_without_mpirun_is_refused(tmp_path):
    weights, inp = make_case(tmp_path, "tiny-llama31.json", 1, 4, seed=0)
    out = tmp_path / "out.safetensors"
    env = {k: v for k, v in mpi_env().items() if not k.startswith(("OMPI_COMM", "PMIX"))}
    proc = subprocess.run([str(a) for a in forward_args("tiny-llama31.json", weights, inp, out,
                                                        ["--parallel", "tp"])],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 2
    assert "mpirun" in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ memory per rank under tp

PEAK_RSS = r"""
import resource, subprocess, sys, os
subprocess.run(sys.argv[2:], check=True)
rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
with open(sys.argv[1] + "." + rank, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
"""


def peak_rss_per_rank(tmp: Path, world: int, args) -> list[int]:
    script = tmp / "peak_rss.py"
    script.write_text(PEAK_RSS)
    prefix = tmp / f"rss{world}"
    launcher = [sys.executable, script, prefix, *args]
    proc = run_ranks(world, launcher) if world > 1 else run(launcher)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [int(Path(f"{prefix}.{r}").read_text()) for r in range(world)]


def test_tp_peak_memory_per_rank_shrinks_with_the_world(tmp_path):
    """A 1-layer MHA model of 4096 wide in bf16: 128 MiB of weights, mapped from the file. Under
    tp each rank reads only its heads' rows (and copies its o_proj columns), so the memory above
    a tiny model's baseline falls to about 1/world."""
    big = tmp_path / "big.json"
    big.write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 32, "head_dim": 128, "num_hidden_layers": 1,
        "max_position_embeddings": 4096, "rope_theta": 10000.0}))
    weights = tmp_path / "big.safetensors"
    assert run([attn_bin(), "random-weights", "--config", big, "--output", weights,
                "--dtype", "bf16"]).returncode == 0
    x = torch.rand(1, 4, 4096) * 2 - 1
    inp = tmp_path / "in.safetensors"
    save_file({"hidden_states": x}, str(inp))
    tiny_dir = tmp_path / "tiny"
    tiny_dir.mkdir()
    tiny_weights, tiny_inp = make_case(tiny_dir, "tiny-llama31.json", 1, 4, seed=0)

    def tiny(world):
        extra = ["--parallel", "tp"] if world > 1 else []
        return max(peak_rss_per_rank(tmp_path, world, forward_args(
            "tiny-llama31.json", tiny_weights, tiny_inp, tmp_path / f"t{world}.safetensors",
            extra)))

    args = [attn_bin(), "forward", "--config", big, "--weights", weights, "--input", inp]
    baseline = tiny(1)
    single = peak_rss_per_rank(tmp_path, 1, [*args, "--output", tmp_path / "o1.safetensors"])[0]
    weight_bytes = 4 * 4096 * 4096 * 2
    assert single - baseline > 0.9 * weight_bytes, (single, baseline)
    for world in (2, 4):
        # The same launch with a tiny model: what MPI and the process cost without weights.
        baseline = tiny(world)
        ranks = peak_rss_per_rank(tmp_path, world, [*args, "--parallel", "tp", "--output",
                                                    tmp_path / f"o{world}.safetensors"])
        print(f"tp world {world}: peak RSS per rank {[r >> 20 for r in ranks]} MiB, tiny-model "
              f"baseline {baseline >> 20} MiB, one process {single >> 20} MiB, weights "
              f"{weight_bytes >> 20} MiB")
        for rank, rss in enumerate(ranks):
            above = rss - baseline
            # 1/world of the weights, plus the allowance of a few MiB of activations/buffers.
            assert above < weight_bytes / world * 1.25 + 24 * 2**20, (world, rank, above)


@pytest.mark.parametrize("mode", ["tp", "dp", "cp"])
def test_bench_layer_runs_split(mode):
    """`attn bench layer --parallel`: per-rank weights (tp: half), the cache each rank holds
    (dp, cp: filled through the layer, since their tokens must reach the ranks owning them;
    cp holds ⌈capacity/W⌉ + 256 slots, so the context is long enough to show it)."""
    flags = ["bench", "layer", "--config", CONFIGS / "tiny-deepseek-v3.json", "--prefill", "6",
             "--decode", "3", "--context", "600", "--batch", "3", "--ragged", "--json"]
    single = json.loads(run([attn_bin(), *flags]).stdout)
    proc = run_ranks(2, [attn_bin(), *flags, "--parallel", mode])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "only rank 0 prints"
    split = json.loads(lines[0])
    assert split["parallel"] == mode and split["world"] == 2
    for form_single, form_split in zip(single["forms"], split["forms"]):
        assert form_split["decode_ms_per_token"] > 0
        if mode == "tp":
            assert split["weights_bytes"] < single["weights_bytes"]
        else:
            assert split["weights_bytes"] == single["weights_bytes"]
        if mode in ("dp", "cp"):
            assert form_split["cache_bytes"] < form_single["cache_bytes"], form_split["form"]
