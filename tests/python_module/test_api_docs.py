# SPDX-License-Identifier: Apache-2.0
"""The public surface: stubs in step with the module, docstrings present, package layout."""

from __future__ import annotations

import ast
import inspect
import pydoc
from pathlib import Path



def _stub_tree(attn):
    stub = Path(attn.__file__).with_name("__init__.pyi")
    assert stub.is_file(), f"no stub file beside {attn.__file__}"
    assert Path(attn.__file__).with_name("py.typed").is_file()
    return ast.parse(stub.read_text())


def test_stub_names_match_module(attn):
    tree = _stub_tree(attn)
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert top == set(attn.__all__)
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        stubbed = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
        public = {n for n in dir(getattr(attn, cls.name)) if not n.startswith("_")}
        assert {n for n in stubbed if not n.startswith("_")} == public, (cls.name,
                                                                         stubbed ^ public)
        # Dunders are stubbed where typing needs them (`in`): they must exist.
        for name in (n for n in stubbed if n.startswith("_")):
            assert hasattr(getattr(attn, cls.name), name), (cls.name, name)


def test_stub_signatures_match_docstring_signatures(attn):
    """pybind11 puts the real signature on the first docstring line: the stub's parameter names
    and order must be the same."""
    tree = _stub_tree(attn)

    def stub_params(fn):
        return [a.arg for a in fn.args.args if a.arg != "self"]

    def real_params(obj):
        first = obj.__doc__.splitlines()[0]
        inside = first[first.index("(") + 1:first.rindex(")")]
        names = [p.split(":")[0].strip() for p in inside.split(",") if p.strip()]
        return [n for n in names if n != "self"]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert stub_params(node) == real_params(getattr(attn, node.name)), node.name
        if isinstance(node, ast.ClassDef):
            for fn in (n for n in node.body if isinstance(n, ast.FunctionDef)):
                member = getattr(getattr(attn, node.name), fn.name)
                if isinstance(member, property):
                    continue
                assert stub_params(fn) == real_params(member), (node.name, fn.name)


def test_help_is_useful(attn):
    text = pydoc.render_doc(attn.Attention, renderer=pydoc.plaintext)
    for needle in ("from_config", "safetensors", "new_cache", "prefill", "decode",
                   "new_paged_cache", "step", "GIL is released", "KeyError"):
        assert needle in text, needle
    for fn in (attn.attention, attn.mla_attention, attn.random_weights, attn.load_safetensors):
        assert len(inspect.getdoc(fn)) > 100
    assert "bottom-right" in attn.attention.__doc__
