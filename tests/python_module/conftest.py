# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the tests of the Python module `attn`.

The module is imported from $ATTN_PYTHON_PATH, else from sys.path ($PYTHONPATH: ctest sets
<build>/python), else from <repo>/build/python. When it cannot be imported every test fails
with a clear message (tests are never skipped). The float64 oracle of the CLI suite
(tests/python/torch_reference.py) is reused for layer outputs.

Two switches serve scripts/pip-install-check.sh, which tests the pip-installed package in a
virtual environment that has NumPy 2 but no torch:
- ATTN_TEST_NUMPY_ONLY=1: test modules that need torch (or the CLI binary) are skipped when it
  is missing. Without it a missing torch is an error: the full run must not shrink silently.
- ATTN_REQUIRE_INSTALLED=1: attn must be imported from an installed package, never from the
  build tree of this checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

NUMPY_ONLY = os.environ.get("ATTN_TEST_NUMPY_ONLY") == "1"
REQUIRE_INSTALLED = os.environ.get("ATTN_REQUIRE_INSTALLED") == "1"

try:
    import torch
except ImportError:
    if not NUMPY_ONLY:
        raise ImportError("the attn module tests need torch (Debian: python3-torch); "
                          "ATTN_TEST_NUMPY_ONLY=1 runs only the tests that need NumPy alone")
    torch = None

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(HERE))


def require_torch():
    """torch, for test modules that need it: `torch = require_torch()` at the top. Skips the
    module only in the NumPy-only run (torch's absence is an error otherwise, see above)."""
    return pytest.importorskip("torch", reason="NumPy-only run (ATTN_TEST_NUMPY_ONLY=1)")


def _import_attn():
    """$ATTN_PYTHON_PATH first, then sys.path ($PYTHONPATH, an installed copy), then the default
    build tree. The header of the pytest run shows which file was imported."""
    default = str(REPO / "build" / "python")
    if "ATTN_PYTHON_PATH" in os.environ:
        sys.path.insert(0, os.environ["ATTN_PYTHON_PATH"])
    try:
        import attn
        # Installed means: from the running interpreter's own prefix (a venv may well live
        # inside the checkout, e.g. build-venv/), not from a build tree of the checkout.
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


_ATTN, _IMPORT_ERROR = _import_attn()


def pytest_report_header(config):
    return (f"attn module: {_ATTN.__file__ if _ATTN else _IMPORT_ERROR}; numpy {np.__version__}; "
            f"torch {torch.__version__ if torch is not None else 'absent (NumPy-only run)'}")


@pytest.fixture(scope="session")
def attn():
    if _ATTN is None:
        pytest.fail(_IMPORT_ERROR + " (build it: cmake --build build)", pytrace=False)
    return _ATTN


@pytest.fixture
def copies(attn):
    """copies() -> input copies made by the binding since the fixture was created."""
    start = attn._attn._copies_made()
    return lambda: attn._attn._copies_made() - start


def snapshot(*arrays):
    """Deep copies, to check that inputs are not mutated."""
    return [a.clone() if _is_tensor(a) else np.array(a, copy=True) for a in arrays]


def _is_tensor(a):
    return torch is not None and isinstance(a, torch.Tensor)


def assert_unchanged(before, *arrays):
    for b, a in zip(before, arrays):
        if _is_tensor(a):
            assert torch.equal(a, b), "input was mutated"
        else:
            assert np.array_equal(a, b, equal_nan=True), "input was mutated"


# Scaled-down configs (as in tests/python/test_oracle.py).
LLAMA = {
    "model_type": "llama", "hidden_size": 128, "num_attention_heads": 8,
    "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
    "max_position_embeddings": 4096, "rope_theta": 500000.0, "attention_bias": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64, "rope_type": "llama3"},
}
QWEN2 = {
    "model_type": "qwen2", "hidden_size": 96, "num_attention_heads": 6,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "use_sliding_window": False,
}
MISTRAL = {
    "model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 1, "num_hidden_layers": 1, "max_position_embeddings": 4096,
    "rope_theta": 10000.0, "sliding_window": 4,
}
DSV3 = {
    "model_type": "deepseek_v3", "hidden_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 4, "num_hidden_layers": 2, "q_lora_rank": 48,
    "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "rope_theta": 10000, "max_position_embeddings": 1280, "rms_norm_eps": 1e-6,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 32,
                     "type": "yarn"},
}
V2LITE = {
    "model_type": "deepseek_v2", "hidden_size": 96, "num_attention_heads": 4,
    "num_key_value_heads": 4, "num_hidden_layers": 1, "q_lora_rank": None,
    "kv_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12,
    "rope_theta": 10000, "max_position_embeddings": 1280, "rms_norm_eps": 1e-6,
}
