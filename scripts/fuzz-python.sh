#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# scripts/fuzz-python.sh [SECONDS] [VENV] [PYTHON_DIR]: coverage-guided fuzzing (atheris) of the
# Python module's array intake (tests/fuzz/fuzz_array_intake.py) for SECONDS (default 60), with
# VENV's python (default build-venv, made by scripts/make-venv.sh, which pins atheris) and the
# module from PYTHON_DIR (default build/python). Starts from the checked-in seed corpus; new
# inputs go to a scratch copy, so the tree stays clean. Fails (exit 1) on a crash, a hang
# (-timeout), or a broken contract the harness asserts; the crashing input is kept in
# $ATTN_FUZZ_ARTIFACTS (default build-fuzz-artifacts/) for a rerun:
#   PYTHONPATH=PYTHON_DIR VENV/bin/python tests/fuzz/fuzz_array_intake.py CRASH_FILE
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
venv=${2:-$repo/build-venv}
python_dir=${3:-$repo/build/python}
artifacts=${ATTN_FUZZ_ARTIFACTS:-$repo/build-fuzz-artifacts}
python=$venv/bin/python

if ! [[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]]; then
  echo "fuzz-python: SECONDS must be a positive integer, got '$seconds'" >&2
  exit 2
fi
"$python" -c 'import atheris' 2>/dev/null || {
  echo "fuzz-python: atheris is missing from $venv (scripts/make-venv.sh $venv installs it)" >&2
  exit 2
}
# From PYTHON_DIR itself: VENV may also hold a pip-installed attn (scripts/pip-install-check.sh),
# which a wrong PYTHON_DIR would silently fuzz instead.
PYTHONPATH=$python_dir "$python" - "$python_dir" <<'PY' || exit 2
import os, sys
try:
    import attn
except ImportError as e:
    sys.exit(f"fuzz-python: attn is not importable from {sys.argv[1]} (build attn_python): {e}")
if not os.path.realpath(attn.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep):
    sys.exit(f"fuzz-python: attn comes from {attn.__file__}, not from {sys.argv[1]}")
PY

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp "$repo"/tests/fuzz/corpus/array_intake/* "$corpus"/
mkdir -p "$artifacts"
# -timeout: one input taking 20 s is a hang (each call works on a few thousand elements).
# -max_len: room for several arrays' worth of choices. One thread: the kernels are not the
# subject here, and the machine may be shared.
echo "fuzz-python: ${seconds}s, module from $python_dir, crashes to $artifacts/"
# The fuzzer's running commentary goes to a log; the summary lines (and, on a finding, the
# log's end) are printed.
log=$artifacts/fuzz-python.log
rc=0
ATTN_NUM_THREADS=1 PYTHONPATH=$python_dir "$python" "$repo/tests/fuzz/fuzz_array_intake.py" \
  -max_total_time="$seconds" -timeout=20 -max_len=512 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$corpus" > "$log" 2>&1 || rc=$?
grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|^Done|stat::number_of_executed_units|stat::peak_rss_mb" \
  "$log" || true
if ((rc != 0)); then
  tail -n 60 "$log" >&2
  echo "fuzz-python: FINDING (exit $rc): see $log and $artifacts/" >&2
  exit 1
fi
