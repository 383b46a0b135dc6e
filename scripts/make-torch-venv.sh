#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/make-torch-venv.sh [DIR]: a virtual environment of Debian's /usr/bin/python3 holding
# exactly the packages pinned in python/requirements-torch.txt (a current PyTorch from PyPI and
# NumPy), for scripts/compare_torch.py (`attn bench --compare-torch`), which uses it to time
# torch's F.scaled_dot_product_attention. DIR defaults to torch-venv/ at the top of the
# checkout, where compare_torch.py looks for it (or set $ATTN_TORCH_VENV).
#
# The pins are installed with --no-deps: the list is the whole environment. PyPI's Linux torch
# wheel is a CUDA build whose metadata pulls in triton and every CUDA library; only the CUDA
# libraries that `import torch` loads are pinned (see the file). About 4 GB on disk, 2 GB
# downloaded; nothing is cached by pip. Idempotent: when every pin is already there it changes
# nothing and needs no network. Ends by checking that SDPA runs on the CPU in f32 and bf16.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if (($# > 1)) || [[ ${1-} == -h || ${1-} == --help ]]; then
  echo "usage: scripts/make-torch-venv.sh [DIR (default: $repo/torch-venv)]" >&2
  exit 2
fi
venv=${1:-$repo/torch-venv}
requirements=$repo/python/requirements-torch.txt
# Debian's interpreter explicitly: another python3 may come first on PATH (pyenv, conda). The
# attn module in build/python is built for it.
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
      echo "make-torch-venv: $venv is incomplete ($problem): recreating it"
      "$python" -m venv --clear "$venv"
    else
      echo "make-torch-venv: $venv exists and is not a virtual environment; not touching it" >&2
      exit 1
    fi
  fi
else
  echo "make-torch-venv: creating $venv"
  "$python" -m venv "$venv"
fi

missing=$(missing_pins)
if [[ -n $missing ]]; then
  # Each wheel is unpacked once: ~4 GB in the venv, plus the largest wheel (~0.5 GB) in /tmp
  # while it installs.
  need_kb=$((5 * 1024 * 1024))
  free_kb=$(df -Pk "$(dirname "$(realpath -m "$venv")")" | awk 'NR == 2 {print $4}')
  if ((free_kb < need_kb)); then
    echo "make-torch-venv: $((free_kb / 1024)) MiB free where $venv goes; it needs ~5 GiB" >&2
    exit 1
  fi
  echo "make-torch-venv: installing into $venv from PyPI (about 2 GB to download):"
  while IFS= read -r line; do echo "  $line"; done <<<"$missing"
  # --no-deps: exactly the pins (torch's own metadata would add triton and more CUDA);
  # --no-warn-conflicts: pip would otherwise list those deliberately missing dependencies.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir --no-deps \
    --no-warn-conflicts -r "$requirements"
  missing=$(missing_pins)
  if [[ -n $missing ]]; then
    echo "make-torch-venv: still not as pinned after installing:" >&2
    echo "$missing" >&2
    exit 1
  fi
fi

# The check: SDPA on the CPU in f32 and bf16 against float64 math, GQA through enable_gqa.
"$venv/bin/python" - <<'PY'
import math
import torch
import torch.nn.functional as F

g = torch.Generator().manual_seed(0)
q = torch.randn(1, 8, 3, 64, generator=g, dtype=torch.float64)
k = torch.randn(1, 2, 40, 64, generator=g, dtype=torch.float64)
v = torch.randn(1, 2, 40, 64, generator=g, dtype=torch.float64)
kk, vv = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
ref = torch.softmax(q @ kk.transpose(-2, -1) / math.sqrt(64), dim=-1) @ vv
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), enable_gqa=True)
    err = (out.double() - ref).abs().max().item()
    assert out.device.type == "cpu" and out.dtype == dtype and err < tol, (dtype, err)
print(f"make-torch-venv: torch {torch.__version__} SDPA runs on the CPU in float32 and "
      f"bfloat16 (CPU capability {torch.backends.cpu.get_cpu_capability()})")
PY
