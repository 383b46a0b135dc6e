# SPDX-License-Identifier: Apache-2.0
"""Issue 4 through the CLI, as a user drives it: Falcon's fused query_key_value against an
independent float64 oracle, Megatron-Core <-> HF conversion (bit-exact round trips, identical
`attn forward` outputs, the linear_qkv layout built here from Megatron's own view semantics),
`attn info` and `attn check-scale` numbers computed by hand, `attn demo --plot`, and every bad
input of the issue exiting with code 2 and a message naming the problem.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import torch_reference as ref
from conftest import AttnCli, load_tensors, save_tensors

REL_TOL = 1e-4


@pytest.fixture
def cli(attn_bin, workdir) -> AttnCli:
    """The attn binary only: info, check-scale, convert and demo are command-line features."""
    return AttnCli(attn_bin, workdir)


def assert_close(got, want, what):
    err = (got.double() - want.double()).abs().max().item()
    scale = want.double().abs().max().item()
    assert scale > 0, what
    assert err <= REL_TOL * scale, f"{what}: max|attn-ref| {err:.3e} vs max|ref| {scale:.3e}"


def assert_input_error(res, *needles):
    assert res.returncode == 2, res.describe()
    for needle in needles:
        assert needle in res.stderr, f"stderr does not mention {needle!r}\n{res.describe()}"


# ============================================================================ Falcon

FALCON_VARIANTS = {
    # Falcon-7B's shape scaled down: multi_query, one kv head, no biases.
    "multi_query": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
                    "num_hidden_layers": 2, "multi_query": True, "bias": False},
    # Falcon-40B-style: new_decoder_architecture with 2 kv groups.
    "new_decoder": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
                    "num_kv_heads": 2, "num_hidden_layers": 2,
                    "new_decoder_architecture": True, "bias": False},
    # Plain MHA with biases on query_key_value and dense.
    "mha_bias": {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
                 "num_hidden_layers": 2, "multi_query": False, "bias": True,
                 "rope_theta": 500.0},
}


def falcon_split(cfg, fused):
    """q, k, v rows of a fused query_key_value tensor, following HF FalconAttention._split_heads:
    new_decoder_architecture views [G, H/G + 2, d]; multi_query [H + 2, d]; else [H, 3, d]."""
    H = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // H
    rest = fused.shape[1:]
    if cfg.get("new_decoder_architecture"):
        G = cfg["num_kv_heads"]
        v = fused.reshape(G, H // G + 2, d, *rest)
        return (v[:, :-2].reshape(H * d, *rest), v[:, -2].reshape(G * d, *rest),
                v[:, -1].reshape(G * d, *rest))
    if cfg.get("multi_query", True):
        v = fused.reshape(H + 2, d, *rest)
        return v[:H].reshape(H * d, *rest), v[H], v[H + 1]
    v = fused.reshape(H, 3, d, *rest)
    return (v[:, 0].reshape(H * d, *rest), v[:, 1].reshape(H * d, *rest),
            v[:, 2].reshape(H * d, *rest))


def falcon_as_llama(cfg):
    H = cfg["num_attention_heads"]
    G = (cfg["num_kv_heads"] if cfg.get("new_decoder_architecture")
         else 1 if cfg.get("multi_query", True) else H)
    return {"model_type": "llama", "hidden_size": cfg["hidden_size"],
            "num_attention_heads": H, "num_key_value_heads": G,
            "num_hidden_layers": cfg["num_hidden_layers"],
            "rope_theta": cfg.get("rope_theta", 10000.0),
            "attention_bias": cfg.get("bias", False)}


@pytest.mark.parametrize("variant", list(FALCON_VARIANTS))
def test_falcon_forward_matches_oracle(cli, variant):
    cfg = FALCON_VARIANTS[variant]
    H = cfg["num_attention_heads"]
    D = cfg["hidden_size"]
    d = D // H
    llama = falcon_as_llama(cfg)
    G = llama["num_key_value_heads"]
    gen = torch.Generator().manual_seed(11)
    p = "transformer.h.1.self_attention."
    fused_rows = (H + 2 * G) * d
    W = {p + "query_key_value.weight": torch.randn(fused_rows, D, generator=gen) / 8,
         p + "dense.weight": torch.randn(D, H * d, generator=gen) / 8}
    if cfg["bias"]:
        W[p + "query_key_value.bias"] = torch.randn(fused_rows, generator=gen) / 4
        W[p + "dense.bias"] = torch.randn(D, generator=gen) / 4
    wpath = save_tensors(cli.path("falcon", ".safetensors"), W)
    cpath = cli.write_config(cfg)

    x = torch.randn(2, 7, D, generator=gen)
    inp = cli.write_input(x)
    got = cli.forward(cpath, wpath, inp, layer=1, prefill=4)

    q = llama_prefix = "model.layers.1.self_attn."
    wq, wk, wv = falcon_split(cfg, W[p + "query_key_value.weight"])
    oracle_w = {q + "q_proj.weight": wq, q + "k_proj.weight": wk, q + "v_proj.weight": wv,
                q + "o_proj.weight": W[p + "dense.weight"]}
    if cfg["bias"]:
        bq, bk, bv = falcon_split(cfg, W[p + "query_key_value.bias"])
        oracle_w.update({llama_prefix + "q_proj.bias": bq, llama_prefix + "k_proj.bias": bk,
                         llama_prefix + "v_proj.bias": bv,
                         llama_prefix + "o_proj.bias": W[p + "dense.bias"]})
    want = ref.forward(llama, oracle_w, x, layer=1)
    assert_close(got, want, f"falcon {variant}")


def test_falcon_random_weights_use_fused_names(cli):
    _, _, W = cli.random_weights(FALCON_VARIANTS["new_decoder"], seed=3, layer=0)
    assert sorted(W) == ["transformer.h.0.self_attention.dense.weight",
                         "transformer.h.0.self_attention.query_key_value.weight"]
    assert tuple(W["transformer.h.0.self_attention.query_key_value.weight"].shape) == (128, 64)


def test_falcon_7b_preset_forward_runs(cli):
    """The real Falcon-7B shape (71 heads of 64, one kv head) through the preset."""
    wpath = cli.path("f7b", ".safetensors")
    cli.run_ok("random-weights", "--preset", "falcon-7b", "--output", wpath, "--seed", 1)
    W = load_tensors(wpath)
    assert tuple(W["transformer.h.0.self_attention.query_key_value.weight"].shape) == \
        ((71 + 2) * 64, 4544)
    x = torch.randn(1, 3, 4544, generator=torch.Generator().manual_seed(2))
    out = cli.path("out", ".safetensors")
    cli.run_ok("forward", "--preset", "falcon-7b", "--weights", wpath, "--input",
               cli.write_input(x), "--output", out)
    cfg7b = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71,
             "num_hidden_layers": 32, "multi_query": True, "bias": False}
    p = "transformer.h.0.self_attention."
    wq, wk, wv = falcon_split(cfg7b, W[p + "query_key_value.weight"])
    q = "model.layers.0.self_attn."
    want = ref.forward(falcon_as_llama(cfg7b),
                       {q + "q_proj.weight": wq, q + "k_proj.weight": wk,
                        q + "v_proj.weight": wv, q + "o_proj.weight": W[p + "dense.weight"]}, x)
    assert_close(load_tensors(out)["attn_output"], want, "falcon-7b")


# ============================================================================ Megatron <-> HF

TINY_MLA = {"model_type": "deepseek_v3", "hidden_size": 96, "num_attention_heads": 4,
            "num_hidden_layers": 2, "q_lora_rank": 32, "kv_lora_rank": 64,
            "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 24,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0,
                             "mscale_all_dim": 1.0, "original_max_position_embeddings": 32}}
TINY_MLA_NO_QLORA = dict(TINY_MLA, q_lora_rank=None)
TINY_QWEN = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
             "num_key_value_heads": 2, "num_hidden_layers": 2, "rope_theta": 10000.0}
TINY_LLAMA_MQA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                  "num_key_value_heads": 1, "num_hidden_layers": 2}
CONVERT_CASES = {"mla": TINY_MLA, "mla_no_qlora": TINY_MLA_NO_QLORA, "qwen2": TINY_QWEN,
                 "llama_mqa": TINY_LLAMA_MQA}


def convert(cli, cfg_path, src, dst, direction, layer=1, *extra):
    frm, to = direction
    cli.run_ok("convert", "--from", frm, "--to", to, "--config", cfg_path, "--input", src,
               "--output", dst, "--layer", layer, *extra)
    return load_tensors(dst)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("name", list(CONVERT_CASES))
def test_convert_round_trip_is_bit_exact_and_outputs_identical(cli, name, dtype):
    cfg = CONVERT_CASES[name]
    cpath, hf_path, W = cli.random_weights(cfg, seed=5, layer=1, dtype=dtype)
    meg_path = cli.path("megatron", ".safetensors")
    M = convert(cli, cpath, hf_path, meg_path, ("hf", "megatron"))
    assert all(k.startswith("decoder.layers.1.self_attention.") for k in M), sorted(M)
    back_path = cli.path("back", ".safetensors")
    B = convert(cli, cpath, meg_path, back_path, ("megatron", "hf"))
    assert sorted(B) == sorted(W)
    for k in W:
        assert B[k].dtype == W[k].dtype, k
        assert torch.equal(B[k], W[k]), k

    x = torch.randn(2, 6, cfg["hidden_size"], generator=torch.Generator().manual_seed(9))
    inp = cli.write_input(x)
    y_hf = cli.forward(cpath, hf_path, inp, layer=1, prefill=3)
    y_meg = cli.forward(cpath, meg_path, inp, layer=1, prefill=3)
    assert torch.equal(y_hf, y_meg)


def test_megatron_mla_names_and_te_norms(cli):
    cpath, hf_path, W = cli.random_weights(TINY_MLA, seed=2, layer=0)
    te = convert(cli, cpath, hf_path, cli.path("te", ".safetensors"), ("hf", "megatron"), 0)
    p = "decoder.layers.0.self_attention."
    assert torch.equal(te[p + "linear_q_up_proj.layer_norm_weight"],
                       W["model.layers.0.self_attn.q_a_layernorm.weight"])
    assert torch.equal(te[p + "linear_kv_up_proj.layer_norm_weight"],
                       W["model.layers.0.self_attn.kv_a_layernorm.weight"])
    assert torch.equal(te[p + "linear_kv_down_proj.weight"],
                       W["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"])
    local = convert(cli, cpath, hf_path, cli.path("local", ".safetensors"), ("hf", "megatron"), 0,
                    "--norm-names", "local")
    assert p + "q_layernorm.weight" in local and p + "kv_layernorm.weight" in local
    assert p + "linear_q_up_proj.layer_norm_weight" not in local


def test_megatron_linear_qkv_layout_built_independently(cli):
    """linear_qkv assembled here as Megatron's get_query_key_value_tensors reads it:
    view [G, (H/G + 2)·d] and split [H/G·d, d, d]; attn must recover the same q/k/v."""
    cfg = TINY_QWEN
    H, G, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d = D // H
    cpath, hf_path, W = cli.random_weights(cfg, seed=8, layer=1)
    p = "model.layers.1.self_attn."
    fused = {}
    for suffix in ("weight", "bias"):
        q, k, v = (W[p + n + "_proj." + suffix] for n in "qkv")
        rest = q.shape[1:]
        groups = [torch.cat([q.reshape(G, H // G * d, *rest)[g], k.reshape(G, d, *rest)[g],
                             v.reshape(G, d, *rest)[g]]) for g in range(G)]
        fused[suffix] = torch.cat(groups)
        # Megatron's own split of what we built gives back q/k/v.
        view = fused[suffix].reshape(G, (H // G + 2) * d, *rest)
        assert torch.equal(view[:, :H // G * d].reshape(H * d, *rest), q)
    m = "decoder.layers.1.self_attention."
    meg = save_tensors(cli.path("meg", ".safetensors"),
                       {m + "linear_qkv.weight": fused["weight"],
                        m + "linear_qkv.bias": fused["bias"],
                        m + "linear_proj.weight": W[p + "o_proj.weight"]})
    B = convert(cli, cpath, meg, cli.path("hf", ".safetensors"), ("megatron", "hf"))
    for k in W:
        assert torch.equal(B[k], W[k]), k


def test_convert_config_both_namings(cli, tmp_path):
    meg_cfg = tmp_path / "megatron.json"
    cli.run_ok("convert", "--from", "hf", "--to", "megatron", "--preset", "deepseek-v3",
               "--config-output", meg_cfg)
    m = json.loads(meg_cfg.read_text())
    assert m["multi_latent_attention"] is True
    assert (m["qk_head_dim"], m["qk_pos_emb_head_dim"], m["v_head_dim"]) == (128, 64, 128)
    assert (m["rotary_scaling_factor"], m["mscale"], m["mscale_all_dim"]) == (40, 1.0, 1.0)
    hf_cfg = tmp_path / "hf.json"
    cli.run_ok("convert", "--from", "megatron", "--to", "hf", "--config", meg_cfg,
               "--config-output", hf_cfg)
    h = json.loads(hf_cfg.read_text())
    assert h["model_type"] == "deepseek_v3"
    assert (h["qk_nope_head_dim"], h["qk_rope_head_dim"], h["kv_lora_rank"]) == (128, 64, 512)
    assert h["rope_scaling"]["mscale_all_dim"] == 1.0
    # Both namings give the same scale.
    for path in (meg_cfg, hf_cfg):
        out = json.loads(cli.run_ok("check-scale", "--config", path, "--json").stdout)
        assert out["softmax_scale"] == pytest.approx(0.1352337788608801, rel=1e-12)


# ============================================================================ info, check-scale


def info_json(cli, *args):
    return json.loads(cli.run_ok("info", *args, "--json").stdout)["models"]


def test_info_deepseek_v3_numbers(cli):
    (v3,) = info_json(cli, "--preset", "deepseek-v3", "--context", "128k", "--memory", "80GiB")
    assert v3["attention_params_layer"] == 187107328
    assert v3["params_ratio_to_mha"] == pytest.approx(0.9104, abs=5e-4)
    naive, latent = v3["forms"]
    assert (naive["values_per_token_layer"], latent["values_per_token_layer"]) == (40960, 576)
    assert latent["ratio_to_mha"] == pytest.approx(576 / 14336)
    assert latent["bytes_per_token_model"] == 576 * 2 * 61
    assert latent["longest_context"] == (80 << 30) // (576 * 2 * 61)
    assert latent["bytes_at_context"] == 576 * 2 * 61 * 131072
    assert latent["decode_intensity_flops_per_byte"] == pytest.approx(2 * 128 * 1088 / 1152)


def test_info_llama_3_70b_numbers(cli):
    (m,) = info_json(cli, "--preset", "llama-3-70b", "--context", "8192", "--memory", "80GiB",
                     "--batch", "2")
    assert m["attention_params_layer"] == 150994944
    (form,) = m["forms"]
    assert form["values_per_token_layer"] == 2048
    assert form["longest_context"] == 131072  # 80 GiB / (327,680 B/token x 2 sequences)
    per_layer = (2 * 8192 * 80 * 128 + 2 * 64 * 128 * 8192) + 4 * 64 * 128 * 8192
    assert form["decode_flops_per_token"] == 80 * per_layer
    assert form["decode_bound"] == "bandwidth-bound"  # 8 FLOP/B < 14.8


def test_info_compare_side_by_side(cli):
    out = cli.run_ok("info", "--compare", "llama-3-70b,deepseek-v3,falcon-7b", "--context",
                     "32k").stdout
    header = out.splitlines()[0]
    assert "llama-3-70b" in header and "deepseek-v3" in header and "falcon-7b" in header
    assert "187.1M" in out and "151.0M" in out
    assert "0.040x" in out and "0.125x" in out


def test_info_peak_overrides_move_the_ridge(cli):
    out = json.loads(cli.run_ok("info", "--preset", "llama-3-8b", "--peak-gflops", "100",
                                "--peak-gbps", "100", "--json").stdout)
    assert out["peak"]["ridge_flops_per_byte"] == 1.0
    assert out["peak"]["origin"] == "given"
    assert out["models"][0]["forms"][0]["decode_bound"] == "compute-bound"  # 4 FLOP/B > 1


def test_check_scale_flags_each_pitfall(cli, tmp_path):
    v3 = json.loads(cli.run_ok("check-scale", "--preset", "deepseek-v3", "--json").stdout)
    flags = {p["id"]: p for p in v3["pitfalls"]}
    assert v3["softmax_scale"] == pytest.approx(0.135234, abs=1e-6)
    assert flags["kv-channels"]["triggered"]
    assert flags["kv-channels"]["wrong_value"] == pytest.approx(1.8738542070926265 / math.sqrt(56))
    assert flags["absorbed-width"]["wrong_value"] == pytest.approx(1.8738542070926265 / 24)
    assert flags["missing-mscale-squared"]["triggered"]
    assert not flags["mscale-vs-mscale-all-dim"]["triggered"]
    assert flags["rope-pairing"]["triggered"]

    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(dict(TINY_MLA, rope_scaling=dict(
        TINY_MLA["rope_scaling"], mscale=1.0, mscale_all_dim=0.707))))
    out = json.loads(cli.run_ok("check-scale", "--config", swapped, "--json").stdout)
    assert {p["id"]: p for p in out["pitfalls"]}["mscale-vs-mscale-all-dim"]["triggered"]

    qwen_yarn = tmp_path / "qwen_yarn.json"
    qwen_yarn.write_text(json.dumps(dict(TINY_QWEN, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})))
    out = json.loads(cli.run_ok("check-scale", "--config", qwen_yarn, "--json").stdout)
    assert out["rope_attention_factor"] == pytest.approx(0.1 * math.log(4) + 1)
    assert {p["id"]: p for p in out["pitfalls"]}["yarn-attention-factor"]["triggered"]

    megatron_v2 = tmp_path / "v2_megatron.json"
    megatron_v2.write_text(json.dumps({
        "num_layers": 60, "hidden_size": 5120, "num_attention_heads": 128,
        "multi_latent_attention": True, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_head_dim": 128, "qk_pos_emb_head_dim": 64, "v_head_dim": 128,
        "rotary_scaling_factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707}))
    res = cli.run_ok("check-scale", "--config", megatron_v2)
    assert "Megatron-Core" in res.stdout and "0.114721" in res.stdout
    assert "[!!] kv-channels" in res.stdout and "1/sqrt" not in res.stdout


# ============================================================================ demo


def test_demo_runs_quietly_when_piped_and_plots(cli):
    png = cli.path("plot", ".png")
    res = cli.run_ok("demo", "--context", "16", "--decode", "2", "--plot", png)
    assert res.stderr == ""
    for row in ("MHA", "GQA", "MQA", "MLA naive", "MLA absorbed", "MLA auto"):
        assert row in res.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IHDR" in data[:16] and data.endswith(
        b"IEND\xaeB`\x82")
    # decode=prefill and forms agreement columns hold fp32 rounding-level numbers.
    for line in res.stdout.splitlines():
        if line.startswith("MLA absorbed"):
            assert float(line.split()[-1]) < 1e-4 and float(line.split()[-2]) < 1e-4


# ============================================================================ bad input


@pytest.mark.parametrize("args,needles", [
    (["info", "--preset", "gpt-5"], ["unknown preset 'gpt-5'", "deepseek-v3", "kimi-k2"]),
    (["info", "--preset", "deepseek-v3", "--memory", "1KiB"], ["fits nothing"]),
    (["info", "--preset", "deepseek-v3", "--memory", "0"], ["fits nothing"]),
    (["info", "--preset", "deepseek-v3", "--context", "lots"], ["--context"]),
    (["info"], ["--preset NAME is required"]),
    (["check-scale", "--preset", "llama-3-8b", "--config", "x.json"], ["not both"]),
    (["convert", "--from", "hf", "--to", "nemo", "--preset", "llama-3-8b"], ["--to"]),
])
def test_cli_bad_input_exits_2(cli, args, needles):
    assert_input_error(cli.run(*args), *needles)


@pytest.mark.parametrize("patch,needles", [
    ({"num_key_value_heads": 3}, ["num_attention_heads (4) is not divisible by "
                                  "num_key_value_heads (3)"]),
    ({"head_dim": 15}, ["rotary_dim (15) must be even"]),
])
def test_contradictory_config_exits_2(cli, patch, needles):
    cpath = cli.write_config(dict(TINY_QWEN, **patch))
    assert_input_error(cli.run("info", "--config", cpath), *needles)


def test_megatron_missing_and_misshapen_tensors_exit_2(cli):
    cpath, hf_path, _ = cli.random_weights(TINY_MLA, seed=1, layer=0)
    meg_path = cli.path("meg", ".safetensors")
    M = convert(cli, cpath, hf_path, meg_path, ("hf", "megatron"), 0)
    p = "decoder.layers.0.self_attention."
    missing = dict(M)
    del missing[p + "linear_kv_up_proj.layer_norm_weight"]
    bad = save_tensors(cli.path("missing", ".safetensors"), missing)
    assert_input_error(cli.run("convert", "--from", "megatron", "--to", "hf", "--config", cpath,
                               "--input", bad, "--output", cli.path("o", ".safetensors")),
                       p + "kv_layernorm.weight", p + "linear_kv_up_proj.layer_norm_weight")
    misshapen = dict(M)
    misshapen[p + "linear_proj.weight"] = torch.zeros(96, 95)
    bad = save_tensors(cli.path("misshapen", ".safetensors"), misshapen)
    assert_input_error(cli.run("convert", "--from", "megatron", "--to", "hf", "--config", cpath,
                               "--input", bad, "--output", cli.path("o", ".safetensors")),
                       p + "linear_proj.weight", "[96, 96]")
    # forward reads Megatron names too, with the same messages.
    inp = cli.write_input(torch.randn(1, 2, 96))
    assert_input_error(cli.run("forward", "--config", cpath, "--weights", bad, "--input", inp,
                               "--output", cli.path("o", ".safetensors")),
                       p + "linear_proj.weight")


def test_minicpm3_longrope_factor_lists_must_cover_the_rotary_width(cli):
    cpath = cli.write_config({"model_type": "minicpm3", "hidden_size": 2560,
                              "num_attention_heads": 40, "num_hidden_layers": 62,
                              "q_lora_rank": 768, "kv_lora_rank": 256, "qk_nope_head_dim": 64,
                              "qk_rope_head_dim": 32, "max_position_embeddings": 32768,
                              "rope_scaling": {"type": "longrope", "short_factor": [1.0],
                                               "long_factor": [1.0],
                                               "original_max_position_embeddings": 32768}})
    assert_input_error(cli.run("info", "--config", cpath), "short_factor", "16 entries")
