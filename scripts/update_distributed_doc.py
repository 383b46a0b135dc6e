#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Refreshes the tables of docs/distributed.md: every ```-block whose first line is
`$ attn info ...` gets that command's output below it, run with the given binary.

    scripts/update_distributed_doc.py [--attn build/attn]

tests/python/test_info_parallel.py fails when a table differs from what the command prints now.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "distributed.md"
BLOCK = re.compile(r"```\n\$ (attn info[^\n]*)\n(.*?)```", re.S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn", default="build/attn", help="the attn binary")
    args = parser.parse_args()

    def refresh(match: re.Match) -> str:
        command = match.group(1)
        output = subprocess.run([args.attn, *shlex.split(command)[1:]], check=True,
                                capture_output=True, text=True).stdout
        return f"```\n$ {command}\n{output}```"

    DOC.write_text(BLOCK.sub(refresh, DOC.read_text()))


if __name__ == "__main__":
    main()
