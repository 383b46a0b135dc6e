# SPDX-License-Identifier: Apache-2.0
"""CLI conventions (issue 8): every command answers --help/-h with its own usage, generated from
its flag declarations; --flag=value equals --flag value; syntax errors exit 2 with the problem
and the usage on stderr; `attn --version` reports project(attn VERSION ...) of CMakeLists.txt.

Runs the binary at $ATTN_BIN (conftest.py). Only cheap commands are run for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

# Every command line that has its own flags, and the flags its usage must list.
COMMANDS = {
    "forward": ["--config", "--preset", "--weights", "--input", "--output", "--layer", "--mla",
                "--prefill", "--cache-dtype", "--threads"],
    "info": ["--config", "--preset", "--compare", "--context", "--batch", "--dtype", "--memory",
             "--peak-gflops", "--peak-gbps", "--json"],
    "check-scale": ["--config", "--preset", "--json"],
    "convert": ["--from", "--to", "--config", "--preset", "--input", "--output", "--layer",
                "--dtype", "--norm-names", "--config-output"],
    "random-weights": ["--config", "--preset", "--output", "--seed", "--layer", "--dtype"],
    "demo": ["--preset", "--context", "--prefill", "--decode", "--seed", "--plot", "--threads"],
    "bench kernel": ["--variant", "--heads", "--kv-heads", "--head-dim", "--v-head-dim",
                     "--q-len", "--kv-len", "--causal", "--dtype", "--threads", "--repeat",
                     "--seed", "--backend", "--peak-bytes", "--pin", "--json"],
    "bench layer": ["--config", "--preset", "--prefill", "--decode", "--context", "--batch",
                    "--dtype", "--mla", "--threads", "--seed", "--pin", "--json"],
    "bench peak": ["--max-threads", "--peak-bytes", "--trials", "--reset", "--json"],
}
TOP_LEVEL = ["bench", "check-scale", "convert", "demo", "forward", "info", "random-weights"]
BENCH_MODES = ["kernel", "layer", "peak", "--compare-torch"]


@pytest.fixture
def env(tmp_path):
    # bench must never touch this machine's real peak file.
    e = dict(os.environ)
    e["ATTN_PEAK_CACHE"] = str(tmp_path / "peak.json")
    return e


def run(attn_bin, env, *args):
    return subprocess.run([str(attn_bin), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def project_version() -> str:
    text = (REPO / "CMakeLists.txt").read_text()
    match = re.search(r"project\(\s*attn\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", text)
    assert match, "no project(attn VERSION x.y.z) in CMakeLists.txt"
    return match.group(1)


def flag_description(usage: str, flag: str) -> str:
    """The description the usage gives `flag`: the text after the name and placeholder column,
    on the flag's line or, when the name is long, the indented line below."""
    lines = usage.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s+{re.escape(flag)}(\s|=|$)", line):
            # Name, placeholder and default are one token each, separated by single spaces;
            # the description follows a run of at least two.
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            if len(parts) == 2:
                return parts[1]
            return lines[i + 1].strip() if i + 1 < len(lines) else ""
    return ""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_is_the_commands_own_usage(attn_bin, env, command, help_flag):
    proc = run(attn_bin, env, *command.split(), help_flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"usage: attn {command}" in proc.stdout.lower(), proc.stdout
    for flag in COMMANDS[command]:
        assert flag_description(proc.stdout, flag), f"{flag} has no description\n{proc.stdout}"
    # -h and --help print the same text.
    other = "-h" if help_flag == "--help" else "--help"
    assert run(attn_bin, env, *command.split(), other).stdout == proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_wins_over_other_flags(attn_bin, env, command):
    # --help after required flags are missing and next to a bad one still just prints the usage.
    proc = run(attn_bin, env, *command.split(), "--bogus-flag", "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: attn {command}" in proc.stdout.lower()


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_flag_exits_2_with_usage(attn_bin, env, command):
    proc = run(attn_bin, env, *command.split(), "--no-such-flag", "3")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "error" in proc.stderr and "--no-such-flag" in proc.stderr, proc.stderr
    assert f"usage: attn {command}" in proc.stderr.lower(), proc.stderr
    assert COMMANDS[command][0] in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_stray_argument_exits_2(attn_bin, env, command):
    proc = run(attn_bin, env, *command.split(), "stray")
    assert proc.returncode == 2, proc.stderr
    assert "'stray'" in proc.stderr and f"usage: attn {command}" in proc.stderr.lower()


def test_top_level_help_lists_every_command(attn_bin, env):
    for flag in ("--help", "-h", "help"):
        proc = run(attn_bin, env, flag)
        assert proc.returncode == 0 and proc.stderr == ""
        for command in TOP_LEVEL:
            assert re.search(rf"^\s+{re.escape(command)}\s+\S", proc.stdout, re.M), command
        assert "--version" in proc.stdout and "--flag=value" in proc.stdout


def test_bench_help_lists_its_modes(attn_bin, env):
    for flag in ("--help", "-h"):
        proc = run(attn_bin, env, "bench", flag)
        assert proc.returncode == 0 and proc.stderr == ""
        for mode in BENCH_MODES:
            assert re.search(rf"^\s+{re.escape(mode)}\s+\S", proc.stdout, re.M), mode
    # --compare-torch hands its arguments to scripts/compare_torch.py, whose --help is argparse's.
    proc = run(attn_bin, env, "bench", "--compare-torch", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--cases" in proc.stdout


@pytest.mark.parametrize("args", [[], ["nonsense"], ["--bogus"]])
def test_missing_or_unknown_command_exits_2_with_usage(attn_bin, env, args):
    proc = run(attn_bin, env, *args)
    assert proc.returncode == 2
    assert "usage: attn <command>" in proc.stderr and "random-weights" in proc.stderr


@pytest.mark.parametrize("args", [["bench"], ["bench", "fly"]])
def test_missing_or_unknown_bench_mode_exits_2_with_usage(attn_bin, env, args):
    proc = run(attn_bin, env, *args)
    assert proc.returncode == 2
    assert "usage: attn bench" in proc.stderr and "kernel" in proc.stderr


def test_version(attn_bin, env):
    want = f"attn {project_version()}\n"
    for args in (["--version"], ["version"]):
        proc = run(attn_bin, env, *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == want


@pytest.mark.parametrize("equals,spaced", [
    (["info", "--preset=llama-3-8b", "--json"], ["info", "--preset", "llama-3-8b", "--json"]),
    (["info", "--preset=deepseek-v3", "--context=32k", "--batch=4", "--memory=80GiB", "--json"],
     ["info", "--preset", "deepseek-v3", "--context", "32k", "--batch", "4", "--memory", "80GiB",
      "--json"]),
    (["check-scale", "--preset=kimi-k2", "--json"], ["check-scale", "--preset", "kimi-k2",
                                                     "--json"]),
])
def test_flag_equals_value_is_flag_space_value(attn_bin, env, equals, spaced):
    a = run(attn_bin, env, *equals)
    b = run(attn_bin, env, *spaced)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert a.stdout == b.stdout


def test_equals_form_in_a_run_that_writes_files(attn_bin, env, tmp_path):
    # random-weights with --flag=value writes the same bytes as with --flag value.
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    config = REPO / "configs" / "tiny-deepseek-v3.json"
    assert run(attn_bin, env, "random-weights", f"--config={config}", f"--output={a}",
               "--seed=3", "--dtype=bf16").returncode == 0
    assert run(attn_bin, env, "random-weights", "--config", config, "--output", b, "--seed", 3,
               "--dtype", "bf16").returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_last_of_a_repeated_flag_wins(attn_bin, env):
    a = run(attn_bin, env, "info", "--preset", "llama-2-7b", "--preset", "llama-3-8b", "--json")
    b = run(attn_bin, env, "info", "--preset", "llama-3-8b", "--json")
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("args,needles", [
    # missing value
    (["info", "--preset"], ["--preset"]),
    (["info", "--preset=llama-3-8b", "--batch"], ["--batch"]),
    # malformed and overflowing integers
    (["info", "--preset", "llama-3-8b", "--batch", "1x"], ["--batch", "'1x'"]),
    (["info", "--preset", "llama-3-8b", "--batch=", "--json"], ["--batch"]),
    (["info", "--preset", "llama-3-8b", "--batch", "99999999999999999999"], ["--batch"]),
    (["random-weights", "--preset", "llama-3-8b", "--output", "w.st", "--seed", "0x10"],
     ["--seed"]),
    (["bench", "kernel", "--heads", "eight", "--q-len", "1", "--kv-len", "4"], ["--heads"]),
    (["demo", "--decode", "2.5"], ["--decode"]),
    # missing required flags
    (["forward", "--preset", "llama-3-8b"], ["--weights is required"]),
    (["convert", "--to", "hf", "--preset", "llama-3-8b"], ["--from is required"]),
    (["random-weights", "--preset", "llama-3-8b"], ["--output is required"]),
    (["bench", "kernel", "--q-len", "1", "--kv-len", "4"], ["--heads is required"]),
    (["bench", "layer", "--preset", "llama-3-8b", "--decode", "1"], ["--prefill is required"]),
    (["info"], ["--preset NAME is required"]),
])
def test_syntax_errors_exit_2_with_usage(attn_bin, env, args, needles):
    proc = run(attn_bin, env, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    command = " ".join(args[:2]) if args[0] == "bench" else args[0]
    assert f"usage: attn {command}" in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["demo", "--threads", "0"], "--threads must lie in [1, 4096]"),
    (["demo", "--threads=5000"], "--threads must lie in [1, 4096]"),
    (["bench", "kernel", "--heads", "8", "--kv-heads", "0", "--q-len", "1", "--kv-len", "4"],
     "--kv-heads must be positive"),
    (["check-scale", "--preset", "llama-3-8b", "--config", "x.json"], "not both"),
])
def test_value_errors_keep_their_messages(attn_bin, env, args, needle):
    proc = run(attn_bin, env, *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr, proc.stderr
