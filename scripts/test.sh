#!/usr/bin/env bash
# Every test: install dependencies, build, run the GoogleTest suite and the PyTorch oracle suite
# (ctest), then rebuild the unit tests with AddressSanitizer + UndefinedBehaviorSanitizer and
# run them again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")

echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer =="
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=ON \
  > build-sanitize.log 2>&1 || { cat build-sanitize.log; exit 1; }
cmake --build build-sanitize -j "$(nproc)" --target attn_tests attn
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build-sanitize/attn_tests --gtest_brief=1
