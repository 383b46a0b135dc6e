#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/make-venv.sh VENV [REQUIREMENTS [PIP-FLAGS...]]: a virtual environment of Debian's
# /usr/bin/python3 holding exactly the packages pinned in REQUIREMENTS (default
# python/requirements-pip-check.txt: scikit-build-core, pybind11, NumPy 2, pytest, atheris, for
# scripts/pip-install-check.sh and the fuzzers; scripts/make-torch-venv.sh passes its own).
# Creates VENV when it is missing or incomplete and installs the pins from PyPI, with PIP-FLAGS
# added to `pip install`. Idempotent: when everything is already there it changes nothing and
# needs no network.
set -euo pipefail
if (($# < 1)); then
  echo "usage: scripts/make-venv.sh VENV [REQUIREMENTS [PIP-FLAGS...]]" >&2
  exit 2
fi
venv=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
requirements=${2:-$repo/python/requirements-pip-check.txt}
pip_flags=("${@:3}")
# Debian's interpreter explicitly: another python3 may come first on PATH (pyenv, conda).
python=/usr/bin/python3

# Prints why VENV is not a usable venv of $python (nothing when it is).
venv_problem() {
  [[ -f $venv/pyvenv.cfg ]] || { echo "no pyvenv.cfg"; return; }
  [[ -x $venv/bin/python ]] || { echo "no bin/python"; return; }
  local want got
  want=$("$python" -c 'import sys; print(sys.base_prefix, sys.version_info[:2])')
  got=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix, sys.version_info[:2])' \
        2>/dev/null) || { echo "bin/python does not run"; return; }
  [[ $got == "$want" ]] || { echo "made from another interpreter ($got)"; return; }
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 || echo "no pip"
}

# Prints the pins that VENV does not satisfy exactly (nothing when all are there). Reads the
# installed metadata only: no network.
missing_pins() {
  "$venv/bin/python" - "$requirements" <<'PY'
import sys
from importlib import metadata

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        print(f"{line} (installed: {installed})")
PY
}

if [[ -e $venv ]]; then
  problem=$(venv_problem)
  if [[ -n $problem ]]; then
    # Recreate only what is recognisably a venv (or an empty folder): never wipe anything else.
    if [[ -f $venv/pyvenv.cfg || -z $(ls -A "$venv") ]]; then
      echo "make-venv: $venv is incomplete ($problem): recreating it"
      "$python" -m venv --clear "$venv"
    else
      echo "make-venv: $venv exists and is not a virtual environment; not touching it" >&2
      exit 1
    fi
  fi
else
  echo "make-venv: creating $venv"
  "$python" -m venv "$venv"
fi

missing=$(missing_pins)
if [[ -n $missing ]]; then
  echo "make-venv: installing into $venv from PyPI:"
  while IFS= read -r line; do echo "  $line"; done <<<"$missing"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check ${pip_flags[@]+"${pip_flags[@]}"} \
    -r "$requirements"
  missing=$(missing_pins)
  if [[ -n $missing ]]; then
    echo "make-venv: still not as pinned after installing:" >&2
    echo "$missing" >&2
    exit 1
  fi
fi
