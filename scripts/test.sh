#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every test: install dependencies, build, run the GoogleTest suite and the PyTorch oracle suite
# (ctest), check license lines, install the C++ package and build an outside project against it,
# pip-install the Python package into a NumPy 2 venv and test it there, and into .venv (PyPI's
# torch 2.x and transformers) and test it there with the torch ops and the transformers
# backend, fuzz each parser and the Python array intake for a minute, then rebuild the unit tests with AddressSanitizer +
# UndefinedBehaviorSanitizer and run them again, and run them once more on an emulated CPU
# without AVX-512.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")

echo "== every source file carries its SPDX license line =="
scripts/spdx.sh

echo "== the C++ package: install into a prefix, use it from an outside CMake and pkg-config project =="
tests/consumer/run.sh build

echo "== the Python package: pip install . into a NumPy 2 venv (offline), module tests there =="
scripts/pip-install-check.sh build-venv
echo "== pip install . into .venv (PyPI's torch 2.x, transformers): module, torch-op and transformers tests =="
scripts/pip-install-check.sh .venv

# Coverage-guided fuzzing, a smoke run of each harness (libFuzzer + ASan + UBSan for the
# safetensors, HF config and Megatron config readers; atheris for the Python array intake).
# Longer runs: scripts/fuzz.sh SECONDS, scripts/fuzz-python.sh SECONDS. 25 s each keeps the
# whole of this script near 27 minutes on a 2-core machine (0.4-0.6 M inputs per C++ harness,
# about 65 k for the Python one, at the rates fresh Debian 12 runs showed).
echo "== fuzzing: each harness for ${ATTN_FUZZ_SECONDS:-25} s =="
scripts/fuzz.sh "${ATTN_FUZZ_SECONDS:-25}"
scripts/fuzz-python.sh "${ATTN_FUZZ_SECONDS:-25}" build-venv build/python

echo "== unit tests under AddressSanitizer + UndefinedBehaviorSanitizer =="
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_SANITIZE=ON \
  > build-sanitize.log 2>&1 || { cat build-sanitize.log; exit 1; }
cmake --build build-sanitize -j "$(nproc)" --target attn_tests attn attn_mpi_tests
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build-sanitize/attn_tests --gtest_brief=1
# The MPI communicator under the sanitizers, 2 ranks (leak checks off: OpenMPI's own).
(cd build-sanitize && ctest --output-on-failure -R '^mpi_communicator_np2$')

# The same binary on an x86-64 without AVX-512: QEMU's user-mode emulator with a Haswell CPU
# (AVX2, no AVX-512) runs the unit tests, so any AVX-512 instruction outside the cpuid-checked
# kernels would fault here. (The kernel-vs-reference cases are skipped: with no AVX-512 both
# sides are the reference kernel.)
# The split layers' one-process comparisons (thread ranks over the same kernels), the paged
# and quantized layers' invariants (paged == contiguous, decode == prefill), the ragged batch's
# per-sequence comparison, the split-merge identity and the quantized reference's self-check
# are left out here too: emulated, they take minutes (reference kernel on both sides) and
# exercise no instruction the rest does not; they run natively and under the sanitizers.
echo "== unit tests on an emulated CPU without AVX-512 (qemu-x86_64 -cpu Haswell) =="
qemu-x86_64 -cpu Haswell build/attn_tests --gtest_brief=1 \
  --gtest_filter='-Shapes/FlashAttentionTest.*:ContextParallel.*:TensorParallelLayerTest.*:DataParallelLayerTest.*:PagedLayers.*:QuantizedKVLayers.*:FlashAttention.RaggedBatchMatchesReferencePerSequence:LseTest.SplitMergeIdentity:QuantizedKV.ReferenceEqualsReferenceOnTheDequantizedValues' \
  2> >(grep -v "TCG doesn't support" >&2)
