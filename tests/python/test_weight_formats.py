# SPDX-License-Identifier: Apache-2.0
"""Weights in their stored dtype (F32, BF16, F16 and DeepSeek's block-scaled F8_E4M3), sharded
checkpoints, and activations that keep their dtype, against independent Python.

The independent side:
  * safetensors_raw.py reads and writes safetensors from the format's specification, decodes
    E4M3 from the OCP spec (a 256-entry float64 table) and dequantizes `W` * `W_scale_inv` per
    128x128 block exactly in float64 -- torch 1.13, numpy and the official reader (through
    them) cannot load F8_E4M3 at all;
  * torch_reference.forward computes the layer in float64 from the dequantized weights, and
    (compute_dtype=...) the same formulas at bf16 / f16 / f32, the precision baseline.

Tolerance for narrow weights (FlashAttention's rule): with ref64 the float64 oracle and torch_lp
the same formulas run by PyTorch at the weights' precision (bf16 weights and activations for bf16
and for fp8 -- DeepSeek's reference dequantizes fp8 to bf16 --, f16 for f16, f32 for f32),

    max|attn - ref64|  <=  2 * max|torch_lp - ref64|  +  FLOOR_REL * max|ref64|.

What attn promises on top (and is checked): projections of at most 8 rows (decode steps, small
batches) multiply fp32 activations with the exactly dequantized weight, so such runs, and every
run with f32 or f16 weights, also meet test_oracle's tight fp32 tolerance (1e-4 * max|ref|).

Files: the fixture `cli` (both backends, see conftest.py) is what every check runs; the weight
files that forward-side tests start from are written by the attn binary (`maker`), since writing
fp8 and --config-output are `random-weights` features tested on their own below. Peak memory is a
property of the `attn forward` process and is measured on the binary only.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import safetensors_raw as sr
import torch_reference as ref
from conftest import REPO, AttnCli, load_tensors, save_tensors, write_json
from test_oracle import REL_TOL, assert_matches, make_hidden, make_positions

# The floor of the tolerance rule, relative to max|ref64|. attn accumulates in fp32: its runs
# with f32 weights land 1e-7 .. 5e-7 * max|ref| from the float64 oracle on these layers (dot
# products of <= 320 terms, softmax, RoPE; fp32 unit roundoff 6e-8), as does PyTorch in fp32.
# Where err_torch is itself at that fp32 level (f32 weights), a factor of 2 between two fp32
# summation orders is not a meaningful bound, so the floor (20-100x the fp32 level) absorbs it;
# it is ~300x below the bf16 error levels (2e-3 .. 5e-3 * max|ref|), so it never hides a
# bf16-sized mistake.
FLOOR_REL = 1e-5

TINY_DSV3 = json.loads((REPO / "configs" / "tiny-deepseek-v3.json").read_text())
TINY_QWEN2 = json.loads((REPO / "configs" / "tiny-qwen2.json").read_text())
# Every projection spans several 128x128 blocks along both axes, with partial blocks:
# q_a [160,320] -> scales [2,3], q_b [192,160] -> [2,2], kv_a [160,320] -> [2,3],
# kv_b [288,144] -> [3,2], o [320,160] -> [3,2].
DSV3_BLOCKS = dict(TINY_DSV3, hidden_size=320, q_lora_rank=160, kv_lora_rank=144,
                   qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=40)
CONFIGS = {"qwen2": TINY_QWEN2, "dsv3": TINY_DSV3, "dsv3-blocks": DSV3_BLOCKS}

DTYPES = ("f32", "bf16", "f16", "fp8")
STORED = {"f32": "F32", "bf16": "BF16", "f16": "F16"}
STORED_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# The precision PyTorch code runs a checkpoint of each dtype at.
COMPUTE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16,
           "fp8": torch.bfloat16}
QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [128, 128]}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj",
               "kv_a_proj_with_mqa", "kv_b_proj")

# Layer calls: B=2, S=8 with --prefill 5 gives a 10-row prefill (over 8 rows: the bf16 path for
# bf16/fp8 weights) and three 2-row decode steps (the exact path).
B, S, PREFILL = 2, 8, 5


@pytest.fixture
def maker(attn_bin, workdir) -> AttnCli:
    """The attn binary, for writing the weight files a test starts from."""
    (workdir / "made").mkdir(exist_ok=True)
    return AttnCli(attn_bin, workdir / "made")


# ============================================================================ helpers


def random_weights(c: AttnCli, cfg, seed, dtype, layer=None, config_output=False):
    """`attn random-weights --dtype DTYPE`; returns (config path, weights path, raw tensors,
    written config dict or None)."""
    cpath = c.write_config(cfg)
    wpath = c.path(f"weights_{dtype}", ".safetensors")
    args = ["random-weights", "--config", cpath, "--output", wpath, "--seed", seed,
            "--dtype", dtype]
    if layer is not None:
        args += ["--layer", layer]
    out_cfg = None
    if config_output:
        opath = c.path("config_out", ".json")
        args += ["--config-output", opath]
    c.run_ok(*args)
    if config_output:
        out_cfg = json.loads(opath.read_text())
    raw, _ = sr.read_raw(wpath)
    return cpath, wpath, raw, out_cfg


def form_of(mla):
    return "absorbed" if mla == "absorbed" else "naive"


def assert_within_torch_precision(got, ref64, low, what):
    """FlashAttention's rule (module docstring). Returns (err_attn, err_torch) / max|ref64|."""
    assert tuple(got.shape) == tuple(ref64.shape), (what, got.shape, ref64.shape)
    g = got.double()
    assert torch.isfinite(g).all(), f"{what}: non-finite output"
    scale = ref64.abs().max().item()
    assert scale > 0, what
    err_attn = (g - ref64).abs().max().item()
    err_torch = (low.double() - ref64).abs().max().item()
    floor = FLOOR_REL * scale
    ratio = err_attn / err_torch if err_torch else float("inf")
    print(f"[{what}] err_attn {err_attn / scale:.2e}  err_torch {err_torch / scale:.2e}  "
          f"ratio {ratio:.3f}  (relative to max|ref| {scale:.3g})")
    assert err_attn <= 2 * err_torch + floor, (
        f"{what}: max|attn-ref64| = {err_attn:.3e} > 2 * max|torch_lp-ref64| ({err_torch:.3e}) "
        f"+ floor {floor:.3e}; ratio {ratio:.2f}")
    return err_attn / scale, err_torch / scale


def raw_bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8) if a.dtype != torch.bool else a,
        b.contiguous().view(torch.uint8) if b.dtype != torch.bool else b)


def shape_pattern(shape) -> str:
    """A regex for a shape as a message may print it: [2, 1], [2,1], (2, 1) or 2x1."""
    inner = r"\s*,\s*".join(str(n) for n in shape)
    return rf"(\[{inner}\]|\({inner}\)|{'x'.join(str(n) for n in shape)})"


def assert_input_error(res, out: Path, *needles, patterns=()):
    assert res.returncode == 2, "expected exit code 2\n" + res.describe()
    assert res.stderr.strip(), "no message on stderr\n" + res.describe()
    for n in needles:
        assert str(n) in res.stderr, f"stderr does not name {n!r}\n" + res.describe()
    for p in patterns:
        assert re.search(p, res.stderr), f"stderr does not match {p!r}\n" + res.describe()
    assert not out.exists(), f"{out} was written although the command failed"


def fp8_projection_names(raw):
    return sorted(n for n, t in raw.items() if t.dtype == "F8_E4M3")


# ============================================================================ safetensors_raw


def test_e4m3_table_follows_the_ocp_spec():
    t = sr.E4M3_TABLE
    assert t[0x00] == 0 and t[0x80] == 0 and math.copysign(1, t[0x80].item()) == -1
    assert t[0x01] == 2.0 ** -9 and t[0x07] == 7 * 2.0 ** -9  # subnormals m * 2^-9
    assert t[0x08] == 2.0 ** -6  # smallest normal: exponent 1 - bias 7
    assert t[0x38] == 1.0 and t[0x39] == 1.125 and t[0xB8] == -1.0
    assert t[0x7E] == 448.0 and t[0xFE] == -448.0
    assert torch.isnan(t[0x7F]) and torch.isnan(t[0xFF])
    assert int(torch.isnan(t).sum()) == 2
    pos = t[:0x7F]
    assert (pos[1:] > pos[:-1]).all(), "codes 0x00..0x7e must increase strictly"
    assert torch.equal(t[0x80:0xFF], -pos)


def test_safetensors_raw_agrees_with_the_official_reader(tmp_path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(),
               "c": torch.randn(2, 2).half(), "d": torch.arange(6, dtype=torch.int64)}
    official = save_tensors(tmp_path / "official.safetensors", tensors)
    raw, meta = sr.read_raw(official)
    assert {k: (v.dtype, v.shape) for k, v in raw.items()} == {
        "a": ("F32", (3, 5)), "b": ("BF16", (7,)), "c": ("F16", (2, 2)), "d": ("I64", (6,))}
    for k, v in tensors.items():
        assert torch.equal(raw[k].to_torch(), v), k
    mine = sr.write_raw(tmp_path / "mine.safetensors",
                        {k: sr.raw_from_torch(v) for k, v in tensors.items()}, {"format": "pt"})
    back = load_tensors(mine)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_dequantize_applies_each_block_scale(tmp_path):
    codes = torch.full((130, 260), 0x38, dtype=torch.uint8)  # every weight 1.0 before scaling
    codes[0, 0] = 0x01  # 2^-9
    codes[129, 259] = 0xFE  # -448
    scales = torch.tensor([[1.0, 2.0, 3.0], [5.0, 7.0, 11.0]])
    raw = {"w": sr.raw_fp8(codes), "w_scale_inv": sr.raw_from_torch(scales),
           "n": sr.raw_from_torch(torch.ones(4).bfloat16())}
    W = sr.dequantize(raw)
    assert set(W) == {"w", "n"}
    w = W["w"]
    assert w[0, 0] == 2.0 ** -9 and w[5, 127] == 1.0 and w[5, 128] == 2.0
    assert w[127, 256] == 3.0 and w[128, 0] == 5.0 and w[128, 255] == 7.0
    assert w[129, 259] == -448.0 * 11.0
    with pytest.raises(KeyError):
        sr.dequantize({"w": sr.raw_fp8(codes)})


@pytest.mark.parametrize("name,form", [("qwen2", "naive"), ("dsv3", "naive"),
                                       ("dsv3", "absorbed")])
def test_reference_precision_levels(name, form):
    """The baseline of the tolerance rule is what it claims: torch_reference at compute_dtype
    lands at that dtype's rounding level from the float64 oracle (a few units of 2^-24, 2^-11,
    2^-8 relative), neither exact (which would make the rule unsatisfiable) nor far off (which
    would make it lax)."""
    cfg = CONFIGS[name]
    g = torch.Generator().manual_seed(3)
    W = {}
    for k, shape in ref.expected_weight_shapes(cfg).items():
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        W[k] = w / math.sqrt(shape[-1]) if len(shape) == 2 else 1 + 0.1 * w
    x = torch.randn(B, S, cfg["hidden_size"], generator=g, dtype=torch.float64)
    ref64 = ref.forward(cfg, W, x, mla_form=form, out_dtype=torch.float64)
    scale = ref64.abs().max().item()
    bands = {torch.float32: (1e-8, 2e-6), torch.float16: (5e-5, 3e-3),
             torch.bfloat16: (5e-4, 2e-2)}
    for dt, (lo, hi) in bands.items():
        low = ref.forward(cfg, W, x, mla_form=form, compute_dtype=dt, out_dtype=torch.float64)
        rel = (low - ref64).abs().max().item() / scale
        print(f"[reference {name} {form} {dt}] relative error {rel:.2e}")
        assert lo < rel < hi, (dt, rel)
    again = ref.forward(cfg, W, x, mla_form=form, compute_dtype=torch.float64,
                        out_dtype=torch.float64)
    assert torch.equal(again, ref64) and torch.equal(
        ref.forward(cfg, W, x, mla_form=form), ref64.float())


# ============================================================================ random-weights


def expected_tensors(cfg, layer, dtype):
    """{name: (stored dtype, shape)} a random-weights file of this dtype holds."""
    out = {}
    for name, shape in ref.expected_weight_shapes(cfg, layer).items():
        proj = name.split(".")[-2]
        if dtype != "fp8":
            out[name] = (STORED[dtype], shape)
        elif proj in PROJECTIONS and name.endswith(".weight"):
            out[name] = ("F8_E4M3", shape)
            out[name + sr.SCALE_SUFFIX] = ("F32", sr.block_scale_shape(shape))
        else:  # norm weights and biases
            out[name] = ("BF16", shape)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_weights_stored_dtypes(cli, name, dtype):
    """Names, dtypes and shapes (fp8: F8_E4M3 projections with F32 [ceil(out/128),
    ceil(in/128)] scales, BF16 norms and biases); values are the same seed's f32 weights
    rounded to the dtype (fp8: to within half an E4M3 step of w / scale in its block)."""
    cfg = CONFIGS[name]
    _, _, raw32, _ = random_weights(cli, cfg, 41, "f32", layer=1)
    _, _, raw, _ = random_weights(cli, cfg, 41, dtype, layer=1)
    assert {k: (t.dtype, t.shape) for k, t in raw.items()} == expected_tensors(cfg, 1, dtype)
    w32 = sr.dequantize(raw32)
    got = sr.dequantize(raw)
    for k, w in w32.items():
        assert torch.isfinite(got[k]).all(), k
        if raw[k].dtype in ("BF16", "F16", "F32"):
            want = w.to(STORED_TORCH[raw[k].dtype]).double()
            assert torch.equal(got[k], want), f"{k}: not the f32 weights rounded to {dtype}"
            continue
        codes = raw[k].to_torch()
        assert not any(bool((codes == c).any()) for c in sr.E4M3_NAN_CODES), k
        scales = raw[k + sr.SCALE_SUFFIX].to_float64()
        assert (scales > 0).all() and torch.isfinite(scales).all(), k
        s = sr.expand_block_scales(scales, raw[k].shape)
        dev = (w / s - sr.e4m3_decode(codes)).abs()
        half_step = 0.5 * sr.e4m3_gap(codes)
        assert (dev <= half_step * (1 + 1e-5) + 1e-12).all(), (
            f"{k}: an fp8 code is not the nearest to w/scale (worst excess "
            f"{(dev - half_step).max().item():.3g})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["qwen2", "dsv3"])
def test_random_weights_config_output(cli, name, dtype):
    """--config-output writes a config.json describing the same layer, with DeepSeek's
    quantization_config for fp8 only."""
    cfg = CONFIGS[name]
    _, _, _, out_cfg = random_weights(cli, cfg, 43, dtype, config_output=True)
    assert ref.parse_config(out_cfg) == ref.parse_config(cfg)
    if dtype == "fp8":
        assert out_cfg["quantization_config"] == QUANTIZATION_CONFIG
    else:
        assert "quantization_config" not in out_cfg


def test_random_weights_fp8_layer_index(cli):
    cfg = dict(TINY_DSV3, num_hidden_layers=4)
    _, _, raw, _ = random_weights(cli, cfg, 5, "fp8", layer=2)
    assert {k: (t.dtype, t.shape) for k, t in raw.items()} == expected_tensors(cfg, 2, "fp8")


def test_random_weights_fp8_refuses_falcon(cli):
    falcon = {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 2, "multi_query": True, "bias": False}
    cpath = cli.write_config(falcon)
    out = cli.dir / "falcon_fp8.safetensors"
    res = cli.run("random-weights", "--config", cpath, "--output", out, "--seed", 1,
                  "--dtype", "fp8")
    assert_input_error(res, out)
    assert "falcon" in res.stderr.lower() or "query_key_value" in res.stderr, res.describe()
    cli.run_ok("random-weights", "--config", cpath, "--output", out, "--seed", 1,
               "--dtype", "bf16")  # the refusal is fp8's, not falcon's


# ============================================================================ round trips

ROUND_TRIPS = [("qwen2", None), ("dsv3", "naive"), ("dsv3", "absorbed"), ("dsv3", "auto")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,mla", ROUND_TRIPS, ids=[f"{n}-{m}" for n, m in ROUND_TRIPS])
def test_round_trip_against_float64_oracle(cli, maker, name, mla, dtype):
    cfg = CONFIGS[name]
    seed = 100 + DTYPES.index(dtype)
    cpath, wpath, raw, _ = random_weights(maker, cfg, seed, dtype)
    W = sr.dequantize(raw)
    x = make_hidden(B, S, cfg["hidden_size"], seed)
    pos = make_positions(B, S, [0, 37])
    inp = cli.write_input(x, pos)
    form = form_of(mla)
    ref64 = ref.forward(cfg, W, x, pos, mla_form=form, out_dtype=torch.float64)
    low = ref.forward(cfg, W, x, pos, mla_form=form, compute_dtype=COMPUTE[dtype],
                      out_dtype=torch.float64)
    outs = {}
    for prefill in (None, PREFILL):
        what = f"{name} {mla or ''} {dtype} prefill={prefill}"
        got = cli.forward_output(cpath, wpath, inp, mla=mla, prefill=prefill)
        assert got.dtype == torch.float32, got.dtype
        assert_within_torch_precision(got, ref64, low, what)
        if dtype in ("f32", "f16"):  # fp32 activations times exactly widened weights
            assert_matches(got, ref64.float(), what)
        outs[prefill] = got
    if dtype == "fp8":
        # Quantization really happened: the fp8 layer is far from the same seed's f32 layer,
        # much farther than from the oracle of its own dequantized weights.
        _, _, raw32, _ = random_weights(maker, cfg, seed, "f32")
        y32 = ref.forward(cfg, sr.dequantize(raw32), x, pos, mla_form=form,
                          out_dtype=torch.float64)
        scale = y32.abs().max().item()
        got = outs[None].double()
        dev = (got - y32).abs().max().item()
        err = (got - ref64).abs().max().item()
        print(f"[{name} {mla or ''} fp8] max|attn - f32-weights layer| {dev / scale:.2e}, "
              f"max|attn - ref64| {err / scale:.2e}")
        assert dev > 5e-3 * scale and dev > 3 * err, (dev, err, scale)


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
@pytest.mark.parametrize("name,mla", [("qwen2", None), ("dsv3", "naive"), ("dsv3", "absorbed"),
                                      ("dsv3", "auto")],
                         ids=["qwen2", "dsv3-naive", "dsv3-absorbed", "dsv3-auto"])
def test_projections_of_at_most_8_rows_are_exact(cli, maker, name, mla, dtype):
    """Decode steps and small batches (<= 8 rows per projection) multiply fp32 activations with
    the weight dequantized exactly: the fp32 tolerance holds although the weights are bf16/fp8."""
    cfg = CONFIGS[name]
    cpath, wpath, raw, _ = random_weights(maker, cfg, 7, dtype)
    W = sr.dequantize(raw)
    for b, s, prefill in [(1, 8, None), (2, 6, 2), (1, 12, 4)]:
        x = make_hidden(b, s, cfg["hidden_size"], 70 + s)
        got = cli.forward_output(cpath, wpath, cli.write_input(x), mla=mla, prefill=prefill)
        want = ref.forward(cfg, W, x, mla_form=form_of(mla))
        assert_matches(got, want, f"{name} {dtype} B={b} S={s} prefill={prefill}")


def craft_fp8(raw, seed):
    """The same tensors with every fp8 weight replaced: codes drawn over all 254 finite codes
    (each one present), and a different, non-power-of-two scale in every block (2^-1.5 .. 2^1.5
    around 1 / (rms of the codes * sqrt(in)), so the layer stays well scaled)."""
    g = torch.Generator().manual_seed(seed)
    finite = torch.tensor([c for c in range(256) if c not in sr.E4M3_NAN_CODES],
                          dtype=torch.uint8)
    rms = sr.E4M3_TABLE[finite.long()].pow(2).mean().sqrt().item()
    out = dict(raw)
    for name in fp8_projection_names(raw):
        out_dim, in_dim = raw[name].shape
        idx = torch.randint(0, len(finite), (out_dim * in_dim,), generator=g)
        idx[: len(finite)] = torch.randperm(len(finite), generator=g)
        out[name] = sr.raw_fp8(finite[idx].reshape(out_dim, in_dim))
        factors = 2.0 ** (torch.rand(sr.block_scale_shape((out_dim, in_dim)), generator=g) * 3
                          - 1.5)
        scales = (factors / (rms * math.sqrt(in_dim))).to(torch.float32)
        out[name + sr.SCALE_SUFFIX] = sr.raw_from_torch(scales)
    return out


@pytest.mark.parametrize("name,mla", [("qwen2", None), ("dsv3-blocks", "naive"),
                                      ("dsv3-blocks", "absorbed"), ("dsv3-blocks", "auto")],
                         ids=["qwen2", "blocks-naive", "blocks-absorbed", "blocks-auto"])
def test_fp8_every_code_and_distinct_block_scales(cli, maker, name, mla):
    """Each block's own scale is applied, on the exact path (tight tolerance) and on the bf16
    tile path (precision rule); the check has teeth: one scale per tensor, or scales used as
    divisors, land far outside it."""
    cfg = CONFIGS[name]
    cpath, _, raw, _ = random_weights(maker, cfg, 11, "fp8")
    crafted = craft_fp8(raw, 12)
    wpath = sr.write_raw(maker.path("crafted", ".safetensors"), crafted, {"format": "pt"})
    W = sr.dequantize(crafted)
    form = form_of(mla)
    # One scale per tensor (the mean of its blocks), and scale used as a divisor.
    flat, inverse = dict(W), dict(W)
    for n in fp8_projection_names(crafted):
        codes = crafted[n].to_float64()
        s = crafted[n + sr.SCALE_SUFFIX].to_float64()
        flat[n] = codes * s.mean()
        inverse[n] = codes / sr.expand_block_scales(s, codes.shape) * (s.mean() ** 2)

    x = make_hidden(1, 6, cfg["hidden_size"], 13)
    got = cli.forward_output(cpath, wpath, cli.write_input(x), mla=mla)
    want = ref.forward(cfg, W, x, mla_form=form)
    assert_matches(got, want, f"{name} crafted fp8, 6 rows")
    scale = want.abs().max().item()
    for wrong, what in ((flat, "one scale per tensor"), (inverse, "scale as divisor")):
        other = ref.forward(cfg, wrong, x, mla_form=form)
        assert (other - want).abs().max().item() > 100 * REL_TOL * scale, what

    x = make_hidden(B, S, cfg["hidden_size"], 14)
    inp = cli.write_input(x)
    ref64 = ref.forward(cfg, W, x, mla_form=form, out_dtype=torch.float64)
    low = ref.forward(cfg, W, x, mla_form=form, compute_dtype=torch.bfloat16,
                      out_dtype=torch.float64)
    for prefill in (None, PREFILL):
        got = cli.forward_output(cpath, wpath, inp, mla=mla, prefill=prefill)
        assert_within_torch_precision(got, ref64, low,
                                      f"{name} {mla or ''} crafted fp8 prefill={prefill}")


# ============================================================================ sharded checkpoints


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_sharded_checkpoint_gives_identical_output(cli, maker, dtype):
    """One file, its 3-shard split (by directory with config.json and no --config, by index
    path) and a directory holding one model.safetensors: bitwise the same attn_output."""
    cfg = TINY_DSV3
    cpath, wpath, raw, out_cfg = random_weights(maker, cfg, 21, dtype, config_output=True)
    shards = cli.dir / "sharded"
    index = sr.split_into_shards(wpath, shards, 3)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) == 3 and set(weight_map) == set(raw)
    if dtype == "fp8":
        assert any(weight_map[n] != weight_map[n + sr.SCALE_SUFFIX]
                   for n in fp8_projection_names(raw)), "no weight split from its scale"
    write_json(shards / "config.json", out_cfg)
    single = cli.dir / "single"
    single.mkdir()
    shutil.copy(wpath, single / "model.safetensors")
    write_json(single / "config.json", out_cfg)

    x = make_hidden(B, S, cfg["hidden_size"], 22)
    inp = cli.write_input(x)
    for mla, prefill in (("absorbed", None), ("naive", PREFILL)):
        base = cli.forward_output(cpath, wpath, inp, mla=mla, prefill=prefill)
        runs = {
            "directory, its config.json": cli.forward_output(None, shards, inp, mla=mla,
                                                             prefill=prefill),
            "index path": cli.forward_output(cpath, index, inp, mla=mla, prefill=prefill),
            "index path, written config": cli.forward_output(cli.write_config(out_cfg), index,
                                                             inp, mla=mla, prefill=prefill),
            "directory with model.safetensors": cli.forward_output(None, single, inp, mla=mla,
                                                                   prefill=prefill),
        }
        for what, y in runs.items():
            assert raw_bytes_equal(y, base), f"{dtype} --mla {mla}: {what} differs from the file"
        W = sr.dequantize(raw)
        ref64 = ref.forward(cfg, W, x, mla_form=form_of(mla), out_dtype=torch.float64)
        low = ref.forward(cfg, W, x, mla_form=form_of(mla), compute_dtype=COMPUTE[dtype],
                          out_dtype=torch.float64)
        assert_within_torch_precision(base, ref64, low, f"sharded {dtype} {mla}")


def test_sharded_layer_selection(cli, maker):
    cfg = dict(TINY_DSV3, num_hidden_layers=4)
    cpath, wpath, raw, out_cfg = random_weights(maker, cfg, 31, "fp8", layer=2,
                                                config_output=True)
    assert all(n.startswith("model.layers.2.") for n in raw)
    shards = cli.dir / "sharded"
    sr.split_into_shards(wpath, shards, 3)
    write_json(shards / "config.json", out_cfg)
    x = make_hidden(1, 5, cfg["hidden_size"], 32)
    inp = cli.write_input(x)
    got = cli.forward_output(cpath, wpath, inp, layer=2)
    assert_matches(got, ref.forward(cfg, sr.dequantize(raw), x, layer=2), "fp8 layer 2")
    assert raw_bytes_equal(cli.forward_output(None, shards, inp, layer=2), got)
    for weights in (wpath, shards):
        out = cli.dir / "layer0.safetensors"
        res = cli.run(*cli.forward_args(cpath, weights, inp, out))
        assert_input_error(res, out, "model.layers.0.self_attn.")


# ============================================================================ activation dtypes


@pytest.mark.parametrize("wdtype", ["f32", "bf16", "fp8"])
@pytest.mark.parametrize("name,mla,prefill", [("qwen2", None, None), ("qwen2", None, 3),
                                              ("dsv3", "naive", None),
                                              ("dsv3", "absorbed", 3)],
                         ids=["qwen2", "qwen2-prefill", "dsv3-naive", "dsv3-absorbed-prefill"])
def test_activation_dtype_is_kept(cli, maker, name, mla, prefill, wdtype):
    """hidden_states BF16 -> attn_output BF16, F16 -> F16, F64 -> F32; each equals the run on
    the same values given as F32, rounded to the output dtype; --output-dtype overrides."""
    cfg = CONFIGS[name]
    cpath, wpath, _, _ = random_weights(maker, cfg, 51, wdtype)
    x = make_hidden(2, 6, cfg["hidden_size"], 52)

    def run(hidden, **kw):
        return cli.forward_output(cpath, wpath, cli.write_input(hidden), mla=mla,
                                  prefill=prefill, **kw)

    y32 = run(x)
    assert y32.dtype == torch.float32
    same_values = {}
    for tdt in (torch.bfloat16, torch.float16):
        xr = x.to(tdt)
        same_values[tdt] = run(xr.float())
        y = run(xr)
        assert y.dtype == tdt, f"{tdt} input gave {y.dtype} output"
        assert raw_bytes_equal(y, same_values[tdt].to(tdt)), \
            f"{tdt} input: not the f32 run of the same values, rounded"
    y64 = run(x.double())
    assert y64.dtype == torch.float32, f"F64 input gave {y64.dtype} output"
    assert raw_bytes_equal(y64, y32), "F64 input of f32 values differs from the F32 run"
    # --output-dtype overrides the input's dtype.
    for odt in ("bf16", "f16"):
        y = run(x, output_dtype=odt)
        assert raw_bytes_equal(y, y32.to(TORCH_DTYPES[odt])), f"f32 input, --output-dtype {odt}"
    for tdt in (torch.bfloat16, torch.float16):
        xr = x.to(tdt)
        assert raw_bytes_equal(run(xr, output_dtype="f32"), same_values[tdt]), \
            f"{tdt} input, --output-dtype f32"
        other = "f16" if tdt == torch.bfloat16 else "bf16"
        assert raw_bytes_equal(run(xr, output_dtype=other),
                               same_values[tdt].to(TORCH_DTYPES[other])), f"{tdt} -> {other}"


# ============================================================================ bad input


@pytest.fixture
def fp8_case(maker, cli):
    """(config path, weights path, raw tensors, written config, input path) of a tiny
    DeepSeek-V3 fp8 layer."""
    cpath, wpath, raw, out_cfg = random_weights(maker, TINY_DSV3, 61, "fp8", config_output=True)
    inp = cli.write_input(make_hidden(1, 3, TINY_DSV3["hidden_size"], 62))
    return cpath, wpath, raw, out_cfg, inp


P0 = ref.layer_prefix(0)


def _forward_error(cli, cpath, weights, inp, *needles, patterns=()):
    out = cli.dir / "never_written.safetensors"
    res = cli.run(*cli.forward_args(cpath, weights, inp, out))
    assert_input_error(res, out, *needles, patterns=patterns)
    return res


def _write(cli, raw, stem):
    return sr.write_raw(cli.path(stem, ".safetensors"), raw, {"format": "pt"})


def test_error_fp8_weight_without_scales(cli, fp8_case):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "kv_b_proj.weight"
    bad = {k: v for k, v in raw.items() if k != name + sr.SCALE_SUFFIX}
    _forward_error(cli, cpath, _write(cli, bad, "no_scale"), inp, name, "has no block scales")


@pytest.mark.parametrize("shape", [(2, 2), (1, 1), (1, 2)])
def test_error_fp8_scales_of_the_wrong_shape(cli, fp8_case, shape):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "o_proj.weight" + sr.SCALE_SUFFIX  # o_proj [256, 96] -> scales [2, 1]
    bad = dict(raw, **{name: sr.raw_from_torch(torch.full(shape, 1e-3))})
    _forward_error(cli, cpath, _write(cli, bad, "bad_scale"), inp, name,
                   patterns=(shape_pattern((2, 1)), shape_pattern(shape)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1e-3])
def test_error_fp8_scale_not_finite_positive(cli, fp8_case, value):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "o_proj.weight" + sr.SCALE_SUFFIX
    bad = dict(raw, **{name: sr.raw_from_torch(torch.tensor([[1e-3], [value]]))})
    _forward_error(cli, cpath, _write(cli, bad, "bad_scale_value"), inp, name)


def test_error_fp8_scales_not_f32(cli, fp8_case):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "o_proj.weight" + sr.SCALE_SUFFIX
    bad = dict(raw, **{name: sr.raw_from_torch(raw[name].to_torch().bfloat16())})
    _forward_error(cli, cpath, _write(cli, bad, "bf16_scale"), inp, name)


def test_error_config_block_size_disagrees_with_the_file(cli, fp8_case):
    """quantization_config says 64x64 blocks, the file was quantized with 128x128 ones: the
    first projection's scales have the wrong shape for 64 blocks."""
    _, wpath, raw, out_cfg, inp = fp8_case
    cfg = json.loads(json.dumps(out_cfg))
    cfg["quantization_config"]["weight_block_size"] = [64, 64]
    res = _forward_error(cli, cli.write_config(cfg), wpath, inp, sr.SCALE_SUFFIX)
    named = [n for n in raw if n.endswith(sr.SCALE_SUFFIX) and n in res.stderr]
    assert named, "no scale tensor named\n" + res.describe()
    scale = named[0]
    want = sr.block_scale_shape(raw[scale[: -len(sr.SCALE_SUFFIX)]].shape, (64, 64))
    assert re.search(shape_pattern(want), res.stderr), res.describe()
    assert re.search(shape_pattern(raw[scale].shape), res.stderr), res.describe()


@pytest.mark.parametrize("code", sr.E4M3_NAN_CODES, ids=["0x7f", "0xff"])
def test_error_fp8_nan_code(cli, fp8_case, code):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "q_b_proj.weight"
    codes = raw[name].to_torch()
    codes[3, 5] = code
    bad = dict(raw, **{name: sr.raw_fp8(codes)})
    _forward_error(cli, cpath, _write(cli, bad, "nan_code"), inp, name, "non-finite")


def test_error_fp8_for_a_norm_weight(cli, fp8_case):
    cpath, _, raw, _, inp = fp8_case
    name = P0 + "kv_a_layernorm.weight"
    bad = dict(raw, **{name: sr.raw_fp8(torch.full((64,), 0x38, dtype=torch.uint8)),
                       name + sr.SCALE_SUFFIX: sr.raw_from_torch(torch.ones(1, 1))})
    _forward_error(cli, cpath, _write(cli, bad, "fp8_norm"), inp, name)


def _sharded(cli, wpath, out_cfg):
    shards = cli.dir / "sharded"
    index = sr.split_into_shards(wpath, shards, 3)
    write_json(shards / "config.json", out_cfg)
    return shards, index, json.loads(index.read_text())


def test_error_index_names_a_missing_shard(cli, fp8_case):
    cpath, wpath, _, out_cfg, inp = fp8_case
    shards, index, idx = _sharded(cli, wpath, out_cfg)
    tensor = sorted(idx["weight_map"])[2]
    idx["weight_map"][tensor] = "model-00009-of-00009.safetensors"
    write_json(index, idx)
    for weights, config in ((index, cpath), (shards, None)):
        _forward_error(cli, config, weights, inp, "model-00009-of-00009.safetensors")


def test_error_tensor_in_two_shards(cli, fp8_case):
    cpath, wpath, _, out_cfg, inp = fp8_case
    shards, index, idx = _sharded(cli, wpath, out_cfg)
    files = sorted(set(idx["weight_map"].values()))
    first, _ = sr.read_raw(shards / files[0])
    second, meta = sr.read_raw(shards / files[1])
    tensor = sorted(first)[0]
    second[tensor] = first[tensor]
    sr.write_raw(shards / files[1], second, meta)
    _forward_error(cli, cpath, index, inp, tensor, files[0], files[1])


@pytest.mark.parametrize("hostile", ["../x.safetensors", "ABSOLUTE", "sub/x.safetensors"])
def test_error_hostile_shard_name(cli, fp8_case, hostile):
    """Shard names are plain file names in the index's directory. The named file exists (and
    holds the right tensors), so only the refusal keeps it from being read."""
    cpath, wpath, _, out_cfg, inp = fp8_case
    shards, index, idx = _sharded(cli, wpath, out_cfg)
    victim = sorted(set(idx["weight_map"].values()))[0]
    target = {"../x.safetensors": cli.dir / "x.safetensors",
              "ABSOLUTE": cli.dir / "abs.safetensors",
              "sub/x.safetensors": shards / "sub" / "x.safetensors"}[hostile]
    target.parent.mkdir(exist_ok=True)
    shutil.copy(shards / victim, target)
    name = str(target) if hostile == "ABSOLUTE" else hostile
    for k, v in idx["weight_map"].items():
        if v == victim:
            idx["weight_map"][k] = name
    write_json(index, idx)
    _forward_error(cli, cpath, index, inp, name)


def test_error_model_directory_without_config(cli, fp8_case):
    _, wpath, _, out_cfg, inp = fp8_case
    shards, _, _ = _sharded(cli, wpath, out_cfg)
    (shards / "config.json").unlink()
    _forward_error(cli, None, shards, inp, "config.json")


def test_error_model_directory_without_config_message(maker):
    """The binary only: the message says the directory lacks config.json, not that
    '<dir>/config.json' is an unknown preset name."""
    _, wpath, _, _ = random_weights(maker, TINY_DSV3, 63, "bf16")
    directory = maker.dir / "model"
    directory.mkdir()
    shutil.copy(wpath, directory / "model.safetensors")
    inp = maker.write_input(make_hidden(1, 3, TINY_DSV3["hidden_size"], 64))
    res = _forward_error(maker, None, directory, inp, "config.json")
    assert "unknown preset" not in res.stderr, res.describe()


# ============================================================================ peak memory

RSS_SCRIPT = ("import resource, subprocess, sys\n"
              "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "sys.stderr.write(r.stderr)\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
              "sys.exit(r.returncode)\n")


def peak_rss_bytes(argv) -> int:
    """Peak RSS of one `attn` process, measured by a fresh Python whose only child it is."""
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}\n{proc.stderr}"
    return int(proc.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_full_size_deepseek_v3_layer_peak_memory(attn_bin, workdir, dtype):
    """`attn forward --preset deepseek-v3` on one full-size layer keeps the weights in their
    stored dtype: peak RSS <= 1.2 x the weights file + 64 MiB (a one-token call; a 16-token one
    that goes through the dequantized tiles of the bf16 path too)."""
    wpath = workdir / f"v3_{dtype}.safetensors"
    try:
        subprocess.run([str(attn_bin), "random-weights", "--preset", "deepseek-v3", "--output",
                        str(wpath), "--seed", "1", "--dtype", dtype], check=True,
                       capture_output=True, timeout=300)
        size = wpath.stat().st_size
        limit = 1.2 * size + 64 * 2 ** 20
        for s, mla in ((1, "absorbed"), (1, "naive"), (16, "auto")):
            inp = save_tensors(workdir / f"in_{s}.safetensors",
                               {"hidden_states": make_hidden(1, s, 7168, 90 + s)})
            out = workdir / "out.safetensors"
            rss = peak_rss_bytes([attn_bin, "forward", "--preset", "deepseek-v3", "--weights",
                                  wpath, "--input", inp, "--output", out, "--mla", mla])
            print(f"[deepseek-v3 {dtype} S={s} --mla {mla}] peak RSS {rss / 2 ** 20:.1f} MiB, "
                  f"weights {size / 2 ** 20:.1f} MiB, ratio {rss / size:.3f}, "
                  f"limit {limit / 2 ** 20:.1f} MiB")
            assert rss <= limit, (s, mla, rss, size)
            y = load_tensors(out)["attn_output"]
            assert y.shape == (1, s, 7168) and torch.isfinite(y).all()
    finally:
        wpath.unlink(missing_ok=True)
