#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every source file of attn carries an SPDX license line (Apache-2.0, see LICENSE) in its first
# lines. `scripts/spdx.sh` lists the source files that lack it and fails; `scripts/spdx.sh --fix`
# adds it (after a shebang line, in the file's own comment syntax).
set -euo pipefail
cd "$(dirname "$0")/.."
tag="SPDX-License-Identifier: Apache-2.0"
fix=${1:-}
missing=0
while IFS= read -r file; do
  head -n 3 "$file" | grep -q "$tag" && continue
  case "$file" in
    *.cc | *.h | *.h.in) comment="// $tag" ;;
    *.py | *.pyi | *.sh | *CMakeLists.txt | *.cmake.in | *.toml | .ci/run) comment="# $tag" ;;
    *) continue ;;
  esac
  if [ "$fix" = "--fix" ]; then
    if head -n 1 "$file" | grep -q '^#!'; then
      sed -i "1a $comment" "$file"
    else
      sed -i "1i $comment" "$file"
    fi
  else
    echo "no SPDX line: $file"
    missing=1
  fi
done < <(find src include python tests bench scripts cmake .ci CMakeLists.txt pyproject.toml \
           -type f -not -path 'tests/fuzz/corpus/*' | sort)
exit "$missing"
