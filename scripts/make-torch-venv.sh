#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/make-torch-venv.sh [DIR]: the project's PyTorch environment, a virtual environment of
# Debian's /usr/bin/python3 holding exactly the packages pinned in python/requirements-torch.txt
# (a current PyTorch and transformers from PyPI, NumPy 2, pytest and attn's build backend). The
# tests install attn into it (`pip install .`, scripts/pip-install-check.sh) and run
# tests/python_torch there; scripts/compare_torch.py (`attn bench --compare-torch`) times
# torch's F.scaled_dot_product_attention with it. DIR defaults to .venv/ at the top of the
# checkout, where compare_torch.py looks for it (or set $ATTN_TORCH_VENV). Called by
# scripts/install-deps.sh.
#
# The pins are installed with --no-deps: the list is the whole environment. PyPI's Linux torch
# wheel is a CUDA build whose metadata pulls in triton and every CUDA library; only the CUDA
# libraries that `import torch` loads are pinned (see the file). About 4.3 GB on disk, 2.5 GB
# downloaded (about a minute here); nothing is cached by pip. Idempotent: when every pin is already there it changes
# nothing and needs no network. Ends by checking that SDPA runs on the CPU in f32 and bf16.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if (($# > 1)) || [[ ${1-} == -h || ${1-} == --help ]]; then
  echo "usage: scripts/make-torch-venv.sh [DIR (default: $repo/.venv)]" >&2
  exit 2
fi
venv=${1:-$repo/.venv}
requirements=$repo/python/requirements-torch.txt
# Each wheel is unpacked once: ~4 GB in the venv, plus the largest wheel (~0.5 GB) in /tmp
# while it installs. Unless torch is there at its pin already, refuse below ~5 GiB free.
torch_pin=$(sed -n 's/^torch==//p' "$requirements")
if ! "$venv/bin/python" -c 'import sys
from importlib import metadata
sys.exit(metadata.version("torch") != sys.argv[1])' "$torch_pin" 2>/dev/null; then
  free_kb=$(df -Pk "$(dirname "$(realpath -m "$venv")")" | awk 'NR == 2 {print $4}')
  if ((free_kb < 5 * 1024 * 1024)); then
    echo "make-torch-venv: $((free_kb / 1024)) MiB free where $venv goes; it needs ~5 GiB" >&2
    exit 1
  fi
fi
# The venv itself: scripts/make-venv.sh with these pins. --no-deps: exactly the pins (torch's
# own metadata would add triton and more CUDA); --no-cache-dir: nothing kept twice;
# --no-warn-conflicts: pip would otherwise list those deliberately missing dependencies.
"$repo/scripts/make-venv.sh" "$venv" "$requirements" --no-cache-dir --no-deps --no-warn-conflicts

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
