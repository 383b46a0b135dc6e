#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/pip-install-check.sh VENV: installs the attn package into VENV the way a user would
# (`pip install .`, through pyproject.toml and scikit-build-core over the top-level CMake
# build) and runs the module tests against the installed copy, with VENV's NumPy 2:
# - a venv without torch (build-venv/, scripts/make-venv.sh): the module tests that need NumPy
#   alone, so attn is shown to work where torch is absent;
# - a venv with torch (.venv/, scripts/make-torch-venv.sh: PyPI's torch 2.x and transformers):
#   every module test, and tests/python_torch (torch ops, SDPA, the transformers backend, the
#   latent cache inside generate()).
# Offline: VENV must already hold the build requirements, and nothing is fetched
# (--no-build-isolation --no-index). The CMake build lives in build-pip/<venv name>/ (kept
# between runs, so rebuilds are incremental).
set -euo pipefail
if (($# != 1)); then
  echo "usage: scripts/pip-install-check.sh VENV" >&2
  exit 2
fi
venv=$(realpath -m "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ ! -x $venv/bin/python ]]; then
  echo "pip-install-check: no virtual environment at $venv (make it: scripts/make-venv.sh $1)" >&2
  exit 2
fi

has_torch=0
"$venv/bin/python" -c "import torch" 2>/dev/null && has_torch=1
name=$(basename "$venv")
echo "== pip install . into $venv ($( ((has_torch)) && echo "with torch: every module test and \
tests/python_torch" || echo "no torch: NumPy-only module tests") follow) =="
(cd "$repo" && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
  --no-build-isolation --no-index --no-deps --force-reinstall \
  --config-settings=build-dir="$repo/build-pip/${name#.}" .)

# From an empty folder with no PYTHONPATH, so that `import attn` finds the installed package
# and not python/ or a build tree of this checkout.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
unset PYTHONPATH ATTN_PYTHON_PATH
if [[ -z ${ATTN_BIN:-} && -x $repo/build/attn ]]; then
  export ATTN_BIN=$repo/build/attn   # test_info compares with the CLI when one is built
fi
"$venv/bin/python" - <<'PY'
import sys
import numpy
import attn

assert numpy.__version__.startswith("2"), f"the venv should have NumPy 2, has {numpy.__version__}"
assert attn.__file__.startswith(sys.prefix), f"attn imported from {attn.__file__}, not the venv"
print(f"attn {attn.__version__} from {attn.__file__}, numpy {numpy.__version__}")
PY
if ((has_torch)); then
  ATTN_REQUIRE_INSTALLED=1 PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q \
    -p no:cacheprovider "$repo/tests/python_module" "$repo/tests/python_torch"
else
  ATTN_TEST_NUMPY_ONLY=1 ATTN_REQUIRE_INSTALLED=1 PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$repo/tests/python_module"
fi
