# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the Python oracle tests of attn.

The attn CLI binary is taken from $ATTN_BIN, default <repo>/build/attn. Tests that need it fail
(they are never skipped) with a clear message when it is missing. Safetensors files are written
and read with the official `safetensors` package.

Every test that takes the `cli` fixture runs twice: through the CLI binary ([cli-…]) and through
the Python module `attn` ([module-…], AttnModuleCli below, which runs the same `random-weights`
and `forward` command lines through the module's API). The module is imported from
$ATTN_PYTHON_PATH, default <repo>/build/python. $ATTN_ORACLE_BACKENDS (default "cli,module")
selects the backends.
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

    def forward_args(self, config: Optional[Path], weights: Path, inp: Path, out: Path,
                     layer: Optional[int] = None, mla: Optional[str] = None,
                     prefill: Optional[int] = None, output_dtype: Optional[str] = None,
                     cache_dtype: Optional[str] = None) -> list:
        """`attn forward` arguments; config None leaves --config out (a model directory's
        config.json is used)."""
        args = ["forward"]
        if config is not None:
            args += ["--config", config]
        args += ["--weights", weights, "--input", inp, "--output", out]
        if layer is not None:
            args += ["--layer", layer]
        if mla is not None:
            args += ["--mla", mla]
        if prefill is not None:
            args += ["--prefill", prefill]
        if output_dtype is not None:
            args += ["--output-dtype", output_dtype]
        if cache_dtype is not None:
            args += ["--cache-dtype", cache_dtype]
        return args

    def forward_output(self, config: Optional[Path], weights: Path, inp: Path,
                       **kw) -> torch.Tensor:
        """Runs `attn forward` (keyword arguments as forward_args) and returns attn_output in
        whatever dtype it was written."""
        out = self.path("output", ".safetensors")
        self.run_ok(*self.forward_args(config, weights, inp, out, **kw))
        tensors = load_tensors(out)
        assert "attn_output" in tensors, f"output keys: {sorted(tensors)}"
        return tensors["attn_output"]

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


ORACLE_BACKENDS = [b for b in os.environ.get("ATTN_ORACLE_BACKENDS", "cli,module").split(",")
                   if b]


@pytest.fixture(params=ORACLE_BACKENDS)
def cli(request, workdir) -> AttnCli:
    if request.param == "module":
        return AttnModuleCli(request.getfixturevalue("attn_module"), workdir)
    return AttnCli(request.getfixturevalue("attn_bin"), workdir)


# ============================================================================ module backend


def attn_module_path() -> Path:
    env = os.environ.get("ATTN_PYTHON_PATH")
    return Path(env) if env else REPO / "build" / "python"


@pytest.fixture(scope="session")
def attn_module():
    path = attn_module_path()
    sys.path.insert(0, str(path))
    try:
        import attn
    except ImportError as e:
        pytest.fail(f"Python module attn not importable from {path} ({e}); build it, or set "
                    f"ATTN_PYTHON_PATH, or ATTN_ORACLE_BACKENDS=cli", pytrace=False)
    return attn


class AttnModuleCli(AttnCli):
    """The CLI's `random-weights` and `forward` command lines, run through the module's API.

    The module's input errors (ValueError, KeyError, OSError) become exit code 2 with the message
    on stderr, as the CLI reports them; any other exception propagates (a bug). `--prefill N`
    runs Attention.prefill_then_decode and, to exercise the cache API, the same prefill and
    decode steps through new_cache/prefill/decode, which must give identical numbers.
    """

    DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, module, workdir: Path):
        super().__init__(Path("attn-module"), workdir)
        self.attn = module

    def run(self, *args) -> CliResult:
        argv = [str(self.binary)] + [str(a) for a in args]
        command, rest = argv[1], argv[2:]
        assert len(rest) % 2 == 0 and all(a.startswith("--") for a in rest[::2]), argv
        flags = {k[2:]: v for k, v in zip(rest[::2], rest[1::2])}
        try:
            if command == "random-weights":
                self._random_weights(flags)
            elif command == "forward":
                self._forward(flags)
            else:
                raise AssertionError(f"the module backend has no command {command!r}")
        except (ValueError, KeyError, OSError) as e:
            return CliResult(argv, subprocess.CompletedProcess(argv, 2, "", f"error: {e}\n"))
        return CliResult(argv, subprocess.CompletedProcess(argv, 0, "", ""))

    def _random_weights(self, flags):
        self.attn.save_random_weights(flags["output"], flags["config"],
                                      seed=int(flags.get("seed", 0)),
                                      layer=int(flags.get("layer", 0)),
                                      dtype=flags.get("dtype", "f32"),
                                      config_output=flags.get("config-output"))

    def _forward(self, flags):
        layer_index = int(flags.get("layer", 0))
        if "config" in flags:
            layer = self.attn.Attention.from_config(flags["config"], flags["weights"],
                                                    layer=layer_index)
        else:
            # `attn forward --weights DIR` without --config: the directory's config.json.
            layer = self.attn.Attention.from_pretrained(flags["weights"], layer=layer_index)
        inputs = self.attn.load_safetensors(flags["input"])
        # hidden_states through torch, so that bf16/f16 reach the module in their own dtype
        # (load_safetensors widens floats to float32) and the output comes back in it.
        x = load_tensors(flags["input"])["hidden_states"]
        if "output-dtype" in flags:
            # The CLI rounds the fp32 result once to --output-dtype: ask the module for fp32
            # (the same input values, widened exactly) and round that.
            x = x.to(torch.float32)
        pos = inputs.get("position_ids")
        mask = inputs.get("attention_mask")
        mla = flags.get("mla", "auto")
        if "prefill" not in flags:
            y = layer.forward(x, pos, mask, mla=mla)
        else:
            n = int(flags["prefill"])
            cache_dtype = flags.get("cache-dtype", "f32")
            y = layer.prefill_then_decode(x, n, pos, mask, mla=mla, cache_dtype=cache_dtype)
            steps = self._cache_steps(layer, x, n, pos, mask, mla, cache_dtype)
            assert torch.equal(steps, y), "new_cache/prefill/decode differ from prefill_then_decode"
        assert y.dtype == x.dtype, (y.dtype, x.dtype)
        if "output-dtype" in flags:
            y = y.to(self.DTYPES[flags["output-dtype"]])
        elif y.dtype == torch.float64:
            y = y.to(torch.float32)  # the CLI writes an F64 input's output as F32
        save_tensors(flags["output"], {"attn_output": y})

    @staticmethod
    def _cache_steps(layer, x, n, pos, mask, mla, cache_dtype):
        B, S, _ = x.shape
        cache = layer.new_cache(B, S, dtype=cache_dtype, mla=mla)
        cut = (lambda a, s: None if a is None else a[:, s])
        outs = [layer.prefill(x[:, :n], cache, cut(pos, slice(0, n)), cut(mask, slice(0, n)))]
        for s in range(n, S):
            outs.append(layer.decode(x[:, s], cache, cut(pos, s), cut(mask, s))[:, None])
        assert cache.lengths.tolist() == [S] * B, cache.lengths
        return torch.cat(outs, dim=1)
