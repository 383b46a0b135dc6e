# SPDX-License-Identifier: Apache-2.0
"""The `attn bench` JSON contract (issue 3), checked through the CLI on small cases.

Every run points ATTN_PEAK_CACHE at a temporary file and measures the roofs over a 4 MiB
buffer, so the tests neither read nor overwrite this machine's real peak file and stay fast.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PEAK_BYTES = str(4 << 20)

KERNEL_FIELDS = ["median_s", "flops", "gflops", "kv_bytes", "gbps", "peak_gflops", "peak_gbps",
                 "peak_fraction"]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e["ATTN_PEAK_CACHE"] = str(tmp_path / "peak.json")
    return e


def run(attn_bin, env, *args, check=True):
    proc = subprocess.run([str(attn_bin), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if check:
        assert proc.returncode == 0, f"{args} exit {proc.returncode}\n{proc.stderr}"
    return proc


def kernel(attn_bin, env, *args):
    proc = run(attn_bin, env, "bench", "kernel", "--repeat", 1, "--peak-bytes", PEAK_BYTES,
               "--json", *args)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON object on stdout, got:\n{proc.stdout}"
    return json.loads(lines[0])


def test_kernel_gqa_causal_contract(attn_bin, env):
    r = kernel(attn_bin, env, "--variant", "gqa", "--heads", 8, "--kv-heads", 2, "--head-dim",
               32, "--q-len", 16, "--kv-len", 64, "--causal", "--dtype", "f32", "--threads", 1)
    for field in KERNEL_FIELDS:
        assert isinstance(r[field], (int, float)) and math.isfinite(r[field]), field
        assert r[field] > 0, field
    # Queries at slots 48 … 63 see 49 … 64 keys: 16·64 − 16·15/2 = 904 pairs, 2·8·64 FLOPs each.
    assert r["flops"] == 2 * 8 * (32 + 32) * 904
    assert r["kv_bytes"] == 64 * 2 * (32 + 32) * 4
    assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9, rel=1e-9)
    assert r["gbps"] == pytest.approx(r["kv_bytes"] / r["median_s"] / 1e9, rel=1e-9)
    roof = min(r["peak_gflops"], r["flops"] / r["kv_bytes"] * r["peak_gbps"])
    assert r["peak_fraction"] == pytest.approx(r["gflops"] / roof, rel=1e-9)
    assert r["binding_roof"] in ("compute", "memory")
    assert r["threads"] == 1 and r["causal"] is True and r["repeat"] == 1
    assert r["compute_roof"] == "fp32-fma"
    assert r["fp32_gflops_now"] > 0 and r["machine_share"] > 0


def test_kernel_non_causal_counts_every_pair(attn_bin, env):
    r = kernel(attn_bin, env, "--heads", 4, "--head-dim", 16, "--q-len", 8, "--kv-len", 8,
               "--dtype", "f16")
    assert r["kv_heads"] == 4 and r["v_head_dim"] == 16
    assert r["flops"] == 2 * 4 * 32 * 8 * 8
    assert r["kv_bytes"] == 8 * 4 * 32 * 2


def test_kernel_mla_defaults_share_one_row(attn_bin, env):
    r = kernel(attn_bin, env, "--variant", "mla", "--heads", 4, "--q-len", 1, "--kv-len", 32,
               "--dtype", "bf16")
    assert (r["head_dim"], r["v_head_dim"], r["kv_heads"]) == (576, 512, 1)
    assert r["flops"] == 2 * 4 * (576 + 512) * 32
    assert r["kv_bytes"] == 32 * 576 * 2  # values are the first 512 entries of the same row
    peak = json.loads(Path(env["ATTN_PEAK_CACHE"]).read_text())
    point = next(p for p in peak["points"] if p["threads"] == r["threads"])
    expected = point["bf16_gflops"] if point["bf16_gflops"] > 0 else point["fp32_gflops"]
    assert r["peak_gflops"] == pytest.approx(expected)
    assert r["peak_gbps"] == pytest.approx(point["dram_gbps"])


@pytest.mark.parametrize("args", [
    ["--heads", 8, "--q-len", 1, "--kv-len", 4, "--dtype", "f64"],
    ["--variant", "mqa", "--heads", 8, "--q-len", 1, "--kv-len", 4],
    ["--heads", 0, "--q-len", 1, "--kv-len", 4],
    ["--heads", 8, "--kv-heads", 3, "--q-len", 1, "--kv-len", 4],
    ["--heads", 8, "--kv-heads", 0, "--q-len", 1, "--kv-len", 4],
    ["--heads", 8, "--head-dim", 0, "--q-len", 1, "--kv-len", 4],
    ["--heads", 8, "--kv-len", 4],
    ["--heads", 8, "--q-len", 5, "--kv-len", 4],
    ["--heads", 8, "--q-len", 1, "--kv-len", 4, "--threads", 0],
    ["--heads", 8, "--q-len", 1, "--kv-len", 4, "--repeat", 0],
    ["--heads", 8, "--q-len", 1, "--kv-len", 4, "--bogus"],
    ["--heads", "eight", "--q-len", 1, "--kv-len", 4],
    ["--variant", "mla", "--heads", 8, "--kv-heads", 4, "--q-len", 1, "--kv-len", 4],
])
def test_kernel_bad_flags_exit_2(attn_bin, env, args):
    proc = run(attn_bin, env, "bench", "kernel", "--peak-bytes", PEAK_BYTES, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "error" in proc.stderr


def test_bench_without_mode_is_usage_error(attn_bin, env):
    assert run(attn_bin, env, "bench", check=False).returncode == 2
    assert run(attn_bin, env, "bench", "fly", check=False).returncode == 2


def test_peak_json_and_cache(attn_bin, env):
    proc = run(attn_bin, env, "bench", "peak", "--peak-bytes", PEAK_BYTES, "--trials", 1,
               "--max-threads", 2, "--json")
    peak = json.loads(proc.stdout)
    assert [p["threads"] for p in peak["points"]] == [1, 2]
    for p in peak["points"]:
        assert p["fp32_gflops"] > 0 and p["dram_gbps"] > 0
        assert (p["bf16_gflops"] > 0) == (peak["bf16_isa"] != "none")
    assert peak["fp32_isa"] in ("avx512f", "avx2-fma", "scalar")
    assert peak["peak_file"] == env["ATTN_PEAK_CACHE"]
    cached = json.loads(Path(env["ATTN_PEAK_CACHE"]).read_text())
    assert cached["points"] == peak["points"]
    assert peak["merged_with_cache"] is False
    # A second run keeps, per thread count, the higher of the two measurements.
    again = json.loads(run(attn_bin, env, "bench", "peak", "--peak-bytes", PEAK_BYTES, "--trials",
                           1, "--max-threads", 2, "--json").stdout)
    assert again["merged_with_cache"] is True
    for merged, first, second in zip(again["points"], peak["points"], again["this_run"]):
        assert merged["fp32_gflops"] == pytest.approx(max(first["fp32_gflops"],
                                                          second["fp32_gflops"]))
    reset = json.loads(run(attn_bin, env, "bench", "peak", "--peak-bytes", PEAK_BYTES, "--trials",
                           1, "--max-threads", 1, "--reset", "--json").stdout)
    assert reset["merged_with_cache"] is False and len(reset["points"]) == 1


SMALL_MLA = {
    "model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 4, "num_hidden_layers": 1, "q_lora_rank": 32, "kv_lora_rank": 16,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "rope_theta": 10000,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
}
SMALL_GQA = {
    "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 256,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
}


def test_layer_mla_reports_each_form(attn_bin, env, tmp_path):
    config = tmp_path / "mla.json"
    config.write_text(json.dumps(SMALL_MLA))
    proc = run(attn_bin, env, "bench", "layer", "--config", config, "--prefill", 8, "--decode",
               4, "--context", 20, "--dtype", "bf16", "--threads", 1, "--json")
    r = json.loads(proc.stdout)
    assert [f["form"] for f in r["forms"]] == ["naive", "absorbed", "auto"]
    by_form = {f["form"]: f for f in r["forms"]}
    # naive caches H·(dn+dr+dv) = 4·24 values per token, the latent forms rk+dr = 24, in bf16.
    assert by_form["naive"]["cache_bytes_per_token"] == 4 * 24 * 2
    assert by_form["auto"]["cache_bytes_per_token"] == 24 * 2
    assert r["naive_vs_auto_cache_ratio"] == pytest.approx(4.0)
    for f in r["forms"]:
        assert f["prefill_tokens_per_s"] > 0 and f["decode_ms_per_token"] > 0
        assert f["cache_bytes"] == f["cache_bytes_per_token"] * (20 + 8 + 4)
        assert f["peak_rss_bytes"] > 0
    assert r["auto_vs_naive_decode_speedup"] > 0
    assert r["weights_bytes"] > 0


def test_layer_batch_scales_cache_and_tokens(attn_bin, env, tmp_path):
    config = tmp_path / "mla.json"
    config.write_text(json.dumps(SMALL_MLA))
    r = json.loads(run(attn_bin, env, "bench", "layer", "--config", config, "--prefill", 4,
                       "--decode", 3, "--context", 5, "--batch", 3, "--mla", "auto",
                       "--json").stdout)
    assert r["batch"] == 3
    f = r["forms"][0]
    assert [x["form"] for x in r["forms"]] == ["auto"]
    assert f["cache_bytes"] == f["cache_bytes_per_token"] * 3 * (5 + 4 + 3)
    assert f["decode_tokens_per_s"] == pytest.approx(3e3 / f["decode_ms_per_token"])
    assert run(attn_bin, env, "bench", "layer", "--config", config, "--prefill", 4, "--decode",
               1, "--batch", 0, check=False).returncode == 2


def test_layer_gqa_and_bad_flags(attn_bin, env, tmp_path):
    config = tmp_path / "gqa.json"
    config.write_text(json.dumps(SMALL_GQA))
    r = json.loads(run(attn_bin, env, "bench", "layer", "--config", config, "--prefill", 4,
                       "--decode", 2, "--json").stdout)
    assert [f["form"] for f in r["forms"]] == ["gqa"]
    assert r["forms"][0]["cache_bytes_per_token"] == 2 * 2 * 16 * 4  # K and V, G=2, d=16, f32
    for bad in (["--prefill", 0, "--decode", 1], ["--prefill", 4], ["--prefill", 4, "--decode",
                1, "--mla", "naive"], ["--prefill", 4, "--decode", 1, "--dtype", "i8"]):
        proc = run(attn_bin, env, "bench", "layer", "--config", config, *bad, check=False)
        assert proc.returncode == 2, (bad, proc.stderr)


def test_compare_torch_and_roofline_plot(attn_bin, env, tmp_path):
    # Roofs for 1 thread from a small buffer, so the kernel runs below do not measure 1 GiB.
    run(attn_bin, env, "bench", "peak", "--peak-bytes", PEAK_BYTES, "--trials", 1,
        "--max-threads", 1)
    rows = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [str(attn_bin), "bench", "--compare-torch", "--cases", "quick", "--repeat", "1",
         "--threads", "1", "--json-out", str(rows)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "attn/torch" in proc.stdout
    records = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(records) == 3
    for rec in records:
        assert rec["speedup"] == pytest.approx(rec["torch_s"] / rec["attn_s"])
    out = tmp_path / "roofline.png"
    plot = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "roofline_plot.py"), "--cases", str(rows),
         "--peak", env["ATTN_PEAK_CACHE"], "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("small", [SMALL_GQA, SMALL_MLA], ids=["gqa", "mla"])
def test_layer_paged_ragged(attn_bin, env, tmp_path, small):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(small))
    common = ["bench", "layer", "--config", config, "--prefill", 4, "--decode", 3, "--context",
              20, "--batch", 3, "--ragged", "--threads", 1, "--json"]
    contiguous = json.loads(run(attn_bin, env, *common, "--dtype", "bf16").stdout)
    paged = json.loads(run(attn_bin, env, *common, "--dtype", "bf16", "--page-size", 16).stdout)
    assert paged["page_size"] == 16 and paged["ragged"] is True
    assert contiguous["page_size"] == 0
    for c, p in zip(contiguous["forms"], paged["forms"]):
        assert c["form"] == p["form"] and p["decode_ms_per_token"] > 0
        assert p["cache_bytes_per_token"] == c["cache_bytes_per_token"]
        # 3 sequences of capacity 20 + 4 + 3 = 27 tokens: 2 pages of 16 each.
        assert p["cache_bytes"] == 3 * 2 * 16 * p["cache_bytes_per_token"]
        # Ragged: the caches hold 20, 17 and 14 tokens before the prefill; a step reads the
        # weights and, on average, 51 + 3·4 + 3·(3 + 1)/2 tokens of cache.
        assert p["decode_bytes_per_step"] == pytest.approx(
            paged["weights_bytes"] + (51 + 12 + 6) * p["cache_bytes_per_token"])
    bf16 = {f["form"]: f for f in contiguous["forms"]}
    for dtype in ("fp8", "int8"):
        q = json.loads(run(attn_bin, env, *common, "--dtype", dtype, "--page-size", 32).stdout)
        for f in q["forms"]:  # one byte per value (the per-token scales are not page storage)
            assert f["cache_bytes_per_token"] * 2 == bf16[f["form"]]["cache_bytes_per_token"]
    for bad in (["--dtype", "fp8"], ["--page-size", 24], ["--page-size", 512]):
        proc = run(attn_bin, env, *common, *bad, check=False)
        assert proc.returncode == 2, (bad, proc.stderr)
