"""Fixtures for the Python oracle tests of attn.

The attn CLI binary is taken from $ATTN_BIN, default <repo>/build/attn. Tests that need it fail
(they are never skipped) with a clear message when it is missing. Safetensors files are written
and read with the official `safetensors` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

CLI_TIMEOUT_S = 120


def attn_binary_path() -> Path:
    env = os.environ.get("ATTN_BIN")
    return Path(env) if env else REPO / "build" / "attn"


def save_tensors(path, tensors: Dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def load_tensors(path) -> Dict[str, torch.Tensor]:
    return load_file(str(path))


def write_json(path, obj) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2))
    return path


class CliResult:
    def __init__(self, args, proc: subprocess.CompletedProcess):
        self.args = list(args)
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def describe(self) -> str:
        return (f"command: {' '.join(self.args)}\nexit code: {self.returncode}\n"
                f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}")


class AttnCli:
    """Runs the attn binary with files kept in one temporary directory."""

    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.dir = workdir
        self._n = 0

    def path(self, stem: str, suffix: str) -> Path:
        self._n += 1
        return self.dir / f"{stem}_{self._n}{suffix}"

    def run(self, *args) -> CliResult:
        argv = [str(self.binary)] + [str(a) for a in args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        return CliResult(argv, proc)

    def run_ok(self, *args) -> CliResult:
        res = self.run(*args)
        assert res.returncode == 0, "attn failed\n" + res.describe()
        return res

    def write_config(self, cfg: dict) -> Path:
        return write_json(self.path("config", ".json"), cfg)

    def random_weights(self, cfg: dict, seed: int, layer: Optional[int] = None,
                       dtype: Optional[str] = None):
        """Writes cfg, runs `attn random-weights`; returns (config path, weights path, tensors)."""
        cpath = self.write_config(cfg)
        wpath = self.path("weights", ".safetensors")
        args = ["random-weights", "--config", cpath, "--output", wpath, "--seed", seed]
        if layer is not None:
            args += ["--layer", layer]
        if dtype is not None:
            args += ["--dtype", dtype]
        self.run_ok(*args)
        return cpath, wpath, load_tensors(wpath)

    def write_input(self, hidden_states: torch.Tensor, position_ids=None,
                    attention_mask=None) -> Path:
        t = {"hidden_states": hidden_states}
        if position_ids is not None:
            t["position_ids"] = position_ids
        if attention_mask is not None:
            t["attention_mask"] = attention_mask
        return save_tensors(self.path("input", ".safetensors"), t)

    def forward_args(self, config: Path, weights: Path, inp: Path, out: Path,
                     layer: Optional[int] = None, mla: Optional[str] = None,
                     prefill: Optional[int] = None) -> list:
        args = ["forward", "--config", config, "--weights", weights, "--input", inp,
                "--output", out]
        if layer is not None:
            args += ["--layer", layer]
        if mla is not None:
            args += ["--mla", mla]
        if prefill is not None:
            args += ["--prefill", prefill]
        return args

    def forward(self, config: Path, weights: Path, inp: Path, layer: Optional[int] = None,
                mla: Optional[str] = None, prefill: Optional[int] = None) -> torch.Tensor:
        out = self.path("output", ".safetensors")
        self.run_ok(*self.forward_args(config, weights, inp, out, layer, mla, prefill))
        tensors = load_tensors(out)
        assert "attn_output" in tensors, f"output keys: {sorted(tensors)}"
        y = tensors["attn_output"]
        assert y.dtype == torch.float32, y.dtype
        return y


@pytest.fixture(scope="session")
def attn_bin() -> Path:
    path = attn_binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"attn binary not found or not executable at {path} "
                    f"(build it, or set ATTN_BIN to its path)", pytrace=False)
    return path


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture
def cli(attn_bin, workdir) -> AttnCli:
    return AttnCli(attn_bin, workdir)
