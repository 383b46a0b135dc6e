# SPDX-License-Identifier: Apache-2.0
"""`attn info --parallel` (issue 14, docs/distributed.md): the scaling model's numbers against a
hand computation from the published DeepSeek-V3 and Llama-3-70B shapes, its errors, and every
table in docs/distributed.md against a fresh run of the command line printed above it (so the
document stays what the command computes, not numbers typed by hand).

Runs the binary at $ATTN_BIN (conftest.py); cheap: no weights, no kernels.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
DOC = REPO / "docs" / "distributed.md"


def run(attn_bin, *args):
    return subprocess.run([str(attn_bin), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def rows_by_key(report):
    return {(r["mode"], r["world"]): r for r in report["rows"]}


def test_deepseek_v3_by_hand(attn_bin):
    proc = run(attn_bin, "info", "--preset", "deepseek-v3", "--parallel", "all", "--world",
               "8,64", "--batch", "256", "--context", "32k", "--weight-dtype", "fp8",
               "--cache-dtype", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (model,) = report["models"]
    rows = rows_by_key(model)
    D, H, rq, rk, dn, dr, dv = 7168, 128, 1536, 512, 128, 64, 128
    B, T = 256, 32768

    def fp8_bytes(rows_, cols):  # fp8 values + one fp32 scale per 128x128 block
        return rows_ * cols + -(-rows_ // 128) * -(-cols // 128) * 4

    def weights(heads):
        return (fp8_bytes(rq, D) + fp8_bytes(heads * (dn + dr), rq) + fp8_bytes(rk + dr, D)
                + fp8_bytes(heads * (dn + dv), rk) + fp8_bytes(D, heads * dv) + (rq + rk) * 4)

    latent = (rk + dr) * 2
    for world in (8, 64):
        tp, dp, cp = rows[("tp", world)], rows[("dp", world)], rows[("cp", world)]
        assert tp["weight_bytes"] == weights(H // world)
        assert dp["weight_bytes"] == cp["weight_bytes"] == weights(H)
        # tp keeps the whole latent cache on every rank; dp and cp split it W ways.
        assert tp["cache_bytes"] == B * T * latent
        assert dp["cache_bytes"] == -(-B // world) * T * latent
        assert cp["cache_bytes"] == B * -(-T // world) * latent
        assert tp["comm_bytes_decode_step"] == (world - 1) * B * D * 4
        assert dp["comm_bytes_decode_step"] == (B - B // world) * D * 4
        assert cp["comm_bytes_decode_step"] == (world - 1) * B * H * (rk + 2) * 4
        assert tp["comm_bytes_prefill_token"] == (world - 1) * D * 4
        assert cp["comm_bytes_prefill_token_ring"] == pytest.approx(
            2 * (world - 1) / world * H * (rk + 2) * 4)
        for row in (tp, dp, cp):
            assert row["decode_step_seconds"] == pytest.approx(
                (row["weight_bytes"] + row["cache_bytes"]) / 200e9
                + row["comm_bytes_decode_step"] / 25e9)
            assert row["stack_memory_bytes"] == pytest.approx(
                61 * (row["weight_bytes"] + row["cache_bytes"]))


def test_llama_3_70b_kv_heads_replicate_past_eight_ranks(attn_bin):
    proc = run(attn_bin, "info", "--preset", "llama-3-70b", "--parallel", "tp", "--world",
               "1,8,64", "--batch", "32", "--context", "8192", "--json")
    assert proc.returncode == 0, proc.stderr
    (model,) = json.loads(proc.stdout)["models"]
    assert model["weight_dtype"] == "bf16"
    rows = rows_by_key(model)
    D, d = 8192, 128
    for world, heads, kv_heads in ((1, 64, 8), (8, 8, 1), (64, 1, 1)):
        row = rows[("tp", world)]
        assert row["weight_bytes"] == 2 * (2 * heads * d * D + 2 * kv_heads * d * D)
        assert row["cache_bytes_per_token"] == 2 * kv_heads * d * 2


@pytest.mark.parametrize("args,words", [
    (["--parallel", "xp", "--world", "8"], ["expected tp, dp or cp", "'xp'"]),
    (["--parallel", "dp", "--world", "0"], ["world (0) must be >= 1"]),
    (["--parallel", "dp", "--world", "8,x"], ["--world expects ranks"]),
    (["--parallel", "tp", "--world", "3"], ["3 ranks do not divide 64 query heads"]),
    (["--parallel", "dp"], ["--parallel needs --world"]),
    (["--world", "8"], ["--world belongs to --parallel"]),
    (["--parallel", "dp", "--world", "8", "--cache-dtype", "fp8"], ["fp8", "valid here: f32, f16, bf16"]),
    (["--parallel", "dp", "--world", "8", "--network", "0"], ["--network expects a positive"]),
])
def test_errors_exit_2(attn_bin, args, words):
    proc = run(attn_bin, "info", "--preset", "llama-3-70b", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    for word in words:
        assert word in proc.stderr


def test_all_reports_a_world_tp_cannot_split_as_a_row(attn_bin):
    proc = run(attn_bin, "info", "--preset", "llama-3-70b", "--parallel", "all", "--world", "3",
               "--json")
    assert proc.returncode == 0, proc.stderr
    rows = rows_by_key(json.loads(proc.stdout)["models"][0])
    assert "3 ranks do not divide 64 query heads" in rows[("tp", 3)]["error"]
    assert rows[("dp", 3)]["weight_bytes"] > 0


def doc_commands():
    """(command line, output) for every ```-block of docs/distributed.md that starts with
    `$ attn info`."""
    blocks = re.findall(r"```\n\$ (attn info[^\n]*)\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/distributed.md holds no `$ attn info` blocks"
    return blocks


def test_doc_tables_are_the_command_output(attn_bin):
    for command, pasted in doc_commands():
        args = shlex.split(command)[2:]
        proc = run(attn_bin, "info", *args)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout == pasted, f"docs/distributed.md is stale for: {command}"
