#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: install dependencies, build, and run `attn demo` (MHA, GQA, MQA and MLA side by
# side on random weights). Arguments go to `attn demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
build/attn demo "$@"
