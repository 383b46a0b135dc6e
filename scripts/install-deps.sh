#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything attn needs on Debian 12, as root: the C++ toolchain and libraries from
# Debian (oneDNN for the linear layers, GoogleTest, Google Benchmark, nlohmann-json, pybind11),
# PyTorch (Debian's python3-torch, CPU) and pytest for the oracle tests, matplotlib for the
# roofline plot (scripts/roofline_plot.py), QEMU's user-mode emulator to run the tests on a CPU
# without AVX-512, the official `safetensors` package from PyPI as a second reader/writer
# of our files, build-venv/: a virtual environment with NumPy 2 and the pinned build backend
# (python/requirements-pip-check.txt) in which the tests `pip install .` offline, and .venv/: the
# PyTorch environment (python/requirements-torch.txt: PyPI's torch 2.x and transformers, about
# 4.3 GB) in which the tests `pip install .` again and run attn's torch ops and transformers
# backend (tests/python_torch).
# Idempotent: when everything is already there it changes nothing and needs no network.
set -euo pipefail

# ocl-icd-opencl-dev: Debian's oneDNN CMake package (dnnl-config.cmake) asks for OpenCL even
# for CPU-only use and fails to configure without it. libcli11-dev parses the CLI's flags;
# libpng-dev writes `--plot` images; python3-venv and ninja-build serve the pip-install check
# (scikit-build-core drives CMake with Ninja); clang and libclang-rt-14-dev (libFuzzer and the
# sanitizer runtimes) build the fuzz harnesses of tests/fuzz. libopenmpi-dev and openmpi-bin
# (mpirun) build and run the MPI communicator behind `attn --parallel` and its tests (tests/mpi).
packages=(build-essential cmake pkg-config libgtest-dev libbenchmark-dev nlohmann-json3-dev
          libdnnl-dev ocl-icd-opencl-dev libcli11-dev libpng-dev libopenmpi-dev openmpi-bin
          python3 python3-dev python3-venv python3-torch python3-numpy python3-pytest
          python3-pip pybind11-dev python3-pybind11
          python3-matplotlib qemu-user ninja-build clang libclang-rt-14-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! /usr/bin/python3 -c "import safetensors" 2>/dev/null; then
  echo "install-deps: installing safetensors from PyPI"
  /usr/bin/python3 -m pip install -q --break-system-packages "safetensors>=0.4"
fi

# The venv of the pip-install check (scripts/pip-install-check.sh): NumPy 2, scikit-build-core,
# pybind11 and pytest as pinned in python/requirements-pip-check.txt; no network once there.
"$(dirname "$0")/make-venv.sh" "$(dirname "$0")/../build-venv"

# The PyTorch environment .venv/ (scripts/make-torch-venv.sh, pins in
# python/requirements-torch.txt); no network once there.
"$(dirname "$0")/make-torch-venv.sh" "$(dirname "$0")/../.venv"
