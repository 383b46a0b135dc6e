# SPDX-License-Identifier: Apache-2.0
"""attn.info gives the numbers of `attn info --json`; presets work wherever a config is taken.
The CLI binary is $ATTN_BIN, default <repo>/build/attn (ctest passes the one it built)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import DSV3, NUMPY_ONLY, REPO

CLI_ONLY_KEYS = {"description", "model"}       # presentation, not in the library
CLI_ONLY_FORM_KEYS = {"decode_bound"}           # depends on the CLI's machine peak


@pytest.fixture(scope="module")
def attn_bin():
    path = os.environ.get("ATTN_BIN", str(REPO / "build" / "attn"))
    if not os.access(path, os.X_OK):
        if NUMPY_ONLY:
            pytest.skip(f"NumPy-only run without the attn binary ({path})")
        pytest.fail(f"attn binary not found at {path} (build it or set ATTN_BIN)", pytrace=False)
    return path


def cli_info(attn_bin, *args):
    proc = subprocess.run([attn_bin, "info", "--json", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    (model,) = json.loads(proc.stdout)["models"]
    return model


def strip_form(form):
    return {k: v for k, v in form.items() if k not in CLI_ONLY_FORM_KEYS}


@pytest.mark.parametrize("preset,kwargs,flags", [
    ("deepseek-v3", dict(context="128k", memory="80GiB"), ["--context", "128k", "--memory",
                                                           "80GiB"]),
    ("llama-3-8b", dict(context=8192, batch=4, dtype="f16"), ["--context", "8192", "--batch",
                                                              "4", "--dtype", "f16"]),
    ("mistral-7b-v0.1", {}, []),
    ("deepseek-v2-lite", dict(dtype="f32"), ["--dtype", "f32"]),
])
def test_info_matches_cli_json(attn, attn_bin, preset, kwargs, flags):
    got = attn.info(preset, **kwargs)
    want = cli_info(attn_bin, "--preset", preset, *flags)
    for key, value in want.items():
        if key in CLI_ONLY_KEYS:
            continue
        if key == "forms":
            assert [strip_form(f) for f in value] == got["forms"]
        elif key == "mha_baseline":
            assert strip_form(value) == got["mha_baseline"]
        else:
            assert got[key] == value, key


def test_info_from_dict_and_file(attn, attn_bin, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DSV3))
    assert attn.info(DSV3, context=1000) == attn.info(str(path), context=1000)
    want = cli_info(attn_bin, "--config", str(path), "--context", "1000")
    assert attn.info(path, context=1000)["attention_params_model"] == \
        want["attention_params_model"]


def test_presets_are_configs(attn):
    names = attn.presets()
    assert "deepseek-v3" in names and "llama-3-8b" in names
    layer = attn.Attention.random("deepseek-v2-lite", seed=1)
    assert layer.config["kv_lora_rank"] == 512 and layer.config["q_lora_rank"] == 0
    with pytest.raises(ValueError, match="no-such-model"):
        attn.info("no-such-model")
    with pytest.raises(ValueError, match="context"):
        attn.info("llama-3-8b", context=0)
