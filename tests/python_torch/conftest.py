# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the tests of attn as a PyTorch client (tests/python_torch): the torch operators,
attn.scaled_dot_product_attention, the transformers backend.

These need PyTorch >= 2.4 (torch.library.custom_op, torch.compile, SDPA with enable_gqa): the
project's .venv (scripts/make-torch-venv.sh) has it. With an older torch or none (Debian's
python3-torch is 1.13) the whole directory is skipped, with the reason in the header and the
summary.

attn is imported as tests/python_module does it: from $ATTN_PYTHON_PATH, else sys.path
($PYTHONPATH, an installed copy), else <repo>/build/python. ATTN_REQUIRE_INSTALLED=1 (set by
scripts/pip-install-check.sh) demands an installed package, never this checkout's build tree.

This directory is a package (__init__.py): helpers are imported as `from .conftest import …`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQUIRE_INSTALLED = os.environ.get("ATTN_REQUIRE_INSTALLED") == "1"
MIN_TORCH = (2, 4)


def _torch_problem():
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (these tests need torch >= 2.4: use .venv/bin/python)"
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        return (f"torch {torch.__version__} is older than 2.4 (no torch.library.custom_op / "
                f"torch.compile support needed here): use .venv/bin/python")
    return None


SKIP_REASON = _torch_problem()

if SKIP_REASON:
    collect_ignore_glob = ["test_*.py"]

    def pytest_report_header(config):
        return f"tests/python_torch: SKIPPED, {SKIP_REASON}"

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line(f"tests/python_torch skipped: {SKIP_REASON}", yellow=True)


def _import_attn():
    default = str(REPO / "build" / "python")
    if "ATTN_PYTHON_PATH" in os.environ:
        sys.path.insert(0, os.environ["ATTN_PYTHON_PATH"])
    try:
        import attn
        where = Path(attn.__file__).resolve()
        if (REQUIRE_INSTALLED and where.is_relative_to(REPO)
                and not where.is_relative_to(Path(sys.prefix).resolve())):
            return None, (f"ATTN_REQUIRE_INSTALLED=1 but attn was imported from this checkout: "
                          f"{attn.__file__}")
        return attn, None
    except ImportError as e:
        if REQUIRE_INSTALLED:
            return None, f"ATTN_REQUIRE_INSTALLED=1 but attn is not installed: {e}"
        sys.path.insert(0, default)
    try:
        import attn
        return attn, None
    except ImportError as e:
        return None, (f"attn module not importable from $ATTN_PYTHON_PATH, sys.path or "
                      f"{default}: {e}")


_ATTN, _IMPORT_ERROR = (None, SKIP_REASON) if SKIP_REASON else _import_attn()


@pytest.fixture(scope="session")
def attn():
    if _ATTN is None:
        pytest.fail(_IMPORT_ERROR + " (build it: cmake --build build --target attn_python)",
                    pytrace=False)
    return _ATTN


@pytest.fixture(scope="session")
def ops(attn):
    """attn.ops: importing it registers torch.ops.attn.*."""
    return attn.ops


@pytest.fixture(autouse=True)
def _seeded():
    import torch
    torch.manual_seed(0)
