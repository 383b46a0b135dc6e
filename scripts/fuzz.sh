#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the libFuzzer harnesses of tests/fuzz with clang++ into build-fuzz and runs each for
# SECONDS (default 60). Fails if any harness finds a crash, sanitizer report, leak, timeout or
# out-of-memory (reproducers in build-fuzz/findings/).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
jobs="$(nproc)"

mkdir -p build-fuzz
log=build-fuzz/build.log
cmake -S tests/fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  > "$log" 2>&1 || { cat "$log"; exit 1; }
cmake --build build-fuzz -j "$jobs" >> "$log" 2>&1 || { cat "$log"; exit 1; }

run() {
  local harness="$1" dict="$2" seeds="tests/fuzz/corpus/${1%_fuzzer}"
  # New inputs go to build-fuzz/corpus/<harness>; the committed seeds are only read.
  mkdir -p "build-fuzz/corpus/$harness" build-fuzz/findings
  echo "== $harness (${seconds}s) =="
  local rc=0
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build-fuzz/$harness" "build-fuzz/corpus/$harness" "$seeds" \
      -dict="tests/fuzz/$dict" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -artifact_prefix="build-fuzz/findings/$harness-" -print_final_stats=1 \
      > "build-fuzz/$harness.log" 2>&1 || rc=$?
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|stat::number_of_executed_units|stat::peak_rss_mb" \
    "build-fuzz/$harness.log" || true
  # libFuzzer exits non-zero on a crash, sanitizer report, leak, timeout or out-of-memory.
  if [ "$rc" -ne 0 ]; then
    echo "FINDING in $harness (exit $rc): see build-fuzz/$harness.log and build-fuzz/findings/" >&2
    return 1
  fi
}

status=0
run safetensors_fuzzer safetensors.dict || status=1
run hf_config_fuzzer config.dict || status=1
run megatron_config_fuzzer config.dict || status=1
run checkpoint_index_fuzzer config.dict || status=1
exit "$status"
