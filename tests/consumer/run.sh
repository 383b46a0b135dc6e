#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs attn from BUILD_DIR into a fresh prefix and uses it as an outside project would:
# CMake (find_package(attn CONFIG) -> attn::attn), pkg-config (attn.pc), the installed CLI, and
# a request for a component attn does not have (must fail, naming it).
#   tests/consumer/run.sh build
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
work="$build/consumer"
prefix="$work/prefix"
rm -rf "$work"
mkdir -p "$work"

# Exactly what a user types: every default component (runtime and development).
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
version=$(sed -n 's/^project(attn VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)

echo "== consumer: installed files =="
(cd "$prefix" && find . -type f -o -type l | sort)
# Nothing of the Python component lands in a C++ install.
! find "$prefix" -name '*.py' | grep -q . || { echo "python files in the C++ install"; exit 1; }

echo "== consumer: installed CLI =="
[ "$("$prefix/bin/attn" --version)" = "attn $version" ]
"$prefix/bin/attn" --version

echo "== consumer: CMake find_package(attn CONFIG) =="
cmake -S tests/consumer -B "$work/cmake" -DCMAKE_PREFIX_PATH="$PWD/$prefix" \
  > "$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/cmake" > "$work/cmake-build.log" 2>&1 || { cat "$work/cmake-build.log"; exit 1; }
"$work/cmake/attn_consumer"

echo "== consumer: pkg-config attn =="
export PKG_CONFIG_PATH="$PWD/$prefix/lib/pkgconfig"
[ "$(pkg-config --modversion attn)" = "$version" ]
libdir=$(pkg-config --variable=libdir attn)
# shellcheck disable=SC2046
c++ -std=c++20 tests/consumer/main.cc $(pkg-config --cflags --libs attn) -Wl,-rpath,"$libdir" \
  -o "$work/attn_consumer_pc"
"$work/attn_consumer_pc" > /dev/null
echo "pkg-config build runs"

echo "== consumer: a missing component is an error that names it =="
if cmake -S tests/consumer -B "$work/cmake-missing" -DCMAKE_PREFIX_PATH="$PWD/$prefix" \
     -DATTN_CONSUMER_COMPONENTS=cuda > "$work/missing.log" 2>&1; then
  echo "find_package(attn COMPONENTS cuda) succeeded"; exit 1
fi
grep -q "attn has no component 'cuda'" "$work/missing.log"
echo "refused: $(grep -o "attn has no component 'cuda'[^)]*)" "$work/missing.log" | head -1)"
echo "consumer: all passed"
