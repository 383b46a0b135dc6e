# SPDX-License-Identifier: Apache-2.0
"""Writing files never loses or redirects data (issue 15, D8/D8b/D9), seen from the CLI:
outputs are written only after every input was read and validated, atomically, keeping an
existing file's mode, and a symlink planted where a temporary file could go is never followed."""

from __future__ import annotations

import os
import stat
import subprocess

from conftest import REPO

CONFIG = REPO / "configs" / "tiny-llama31.json"


def run(attn_bin, *args):
    return subprocess.run([str(attn_bin), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_convert_failing_on_its_input_leaves_config_output_untouched(attn_bin, tmp_path):
    """D9: --config-output used to be written before --input was read, so a run that failed
    later had already replaced it."""
    config_out = tmp_path / "megatron.json"
    config_out.write_text("the user's existing file\n")
    bad_input = tmp_path / "corrupt.safetensors"
    bad_input.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    proc = run(attn_bin, "convert", "--from", "hf", "--to", "megatron", "--config", CONFIG,
               "--input", bad_input, "--output", tmp_path / "out.safetensors",
               "--config-output", config_out)
    assert proc.returncode == 2, proc.stderr
    assert config_out.read_text() == "the user's existing file\n"
    assert not (tmp_path / "out.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.safetensors", "megatron.json"]


def test_rewrite_keeps_mode_and_never_follows_planted_symlinks(attn_bin, tmp_path):
    """D8: a symlink at the old predictable temporary name (<output>.tmp.<pid>) redirected the
    write; D8b: an existing 0600 output became 0644."""
    out = tmp_path / "w.safetensors"
    assert run(attn_bin, "random-weights", "--config", CONFIG, "--output", out).returncode == 0
    os.chmod(out, 0o600)
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive\n")
    # Plant symlinks at every name a pid-suffixed temporary could take in this run's pid range.
    pid_guess = os.getpid()
    for pid in range(pid_guess, pid_guess + 200):
        for pattern in (f"{out}.tmp.{pid}", f"{out}.tmp{pid}"):
            os.symlink(victim, pattern)
    proc = run(attn_bin, "random-weights", "--config", CONFIG, "--output", out, "--seed", 2)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "must survive\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.stat().st_size > 0 and not out.is_symlink()
