# SPDX-License-Identifier: Apache-2.0
"""The CLI checks outputs like inputs (issue 15): weights that make a finite input overflow give
exit 2 and a message naming the layer and the first bad [b, s, d] position, and no output file;
a healthy run with the same command line writes one."""

from __future__ import annotations

import subprocess

import torch
from safetensors.torch import load_file, save_file

CONFIG = "configs/tiny-llama31.json"


def run(attn_bin, *args):
    return subprocess.run([str(attn_bin), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_forward_output_overflow_is_exit_2_naming_layer(attn_bin, tmp_path):
    from conftest import REPO
    config = REPO / CONFIG
    weights = tmp_path / "w.safetensors"
    proc = run(attn_bin, "random-weights", "--config", config, "--output", weights, "--layer", 1)
    assert proc.returncode == 0, proc.stderr
    inputs = tmp_path / "in.safetensors"
    x = torch.rand(1, 3, 256) + 0.1
    save_file({"hidden_states": x}, str(inputs))

    out = tmp_path / "out.safetensors"
    proc = run(attn_bin, "forward", "--config", config, "--weights", weights, "--input", inputs,
               "--output", out, "--layer", 1)
    assert proc.returncode == 0, proc.stderr
    assert torch.isfinite(load_file(str(out))["attn_output"]).all()

    tensors = load_file(str(weights))
    for name in tensors:
        if name.endswith("v_proj.weight"):
            tensors[name] = torch.full_like(tensors[name], 0.1)
        if name.endswith("o_proj.weight"):
            tensors[name] = torch.full_like(tensors[name], 3e38)
    save_file(tensors, str(weights))
    bad_out = tmp_path / "bad.safetensors"
    proc = run(attn_bin, "forward", "--config", config, "--weights", weights, "--input", inputs,
               "--output", bad_out, "--layer", 1, "--prefill", 2)
    assert proc.returncode == 2, proc.stderr
    assert "layer 1 output attn_output: non-finite value" in proc.stderr
    assert "at [0, 0, 0]" in proc.stderr
    assert not bad_out.exists()
