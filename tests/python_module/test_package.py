# SPDX-License-Identifier: Apache-2.0
"""Package-level API: attn.__version__ and the kernel thread count (NumPy only, no torch)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from conftest import LLAMA, REPO


def project_version():
    """The one place the version is written: project(attn VERSION x.y.z) in CMakeLists.txt."""
    text = (REPO / "CMakeLists.txt").read_text()
    match = re.search(r"^project\(\s*attn\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", text, re.M)
    assert match, "no project(attn VERSION ...) in CMakeLists.txt"
    return match.group(1)


def test_version_is_the_project_version(attn):
    assert isinstance(attn.__version__, str)
    assert attn.__version__ == project_version()
    assert attn._attn.__version__ == attn.__version__


def test_installed_metadata_version(attn):
    """When attn was installed by pip, its distribution metadata carries the same version."""
    from importlib import metadata
    try:
        dist = metadata.distribution("attn")
    except metadata.PackageNotFoundError:
        pytest.skip("attn imported from a build tree, not installed by pip")
    if not any(str(f).startswith("attn/_attn") for f in dist.files or ()):
        pytest.skip("an attn distribution is installed, but not the one imported")
    assert dist.version == attn.__version__


@pytest.fixture
def restore_threads(attn):
    original = attn.get_num_threads()
    yield original
    attn.set_num_threads(original)


def test_thread_count_round_trip(attn, restore_threads):
    assert restore_threads >= 1
    for n in (1, 2, 3, restore_threads):
        attn.set_num_threads(n)
        assert attn.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, -(2**31)])
def test_thread_count_bad_values(attn, restore_threads, bad):
    with pytest.raises(ValueError, match="thread count must be >= 1"):
        attn.set_num_threads(bad)
    assert attn.get_num_threads() == restore_threads


@pytest.mark.parametrize("bad", ["2", 2.5, None, 2**40])
def test_thread_count_bad_types(attn, restore_threads, bad):
    with pytest.raises(TypeError):
        attn.set_num_threads(bad)
    assert attn.get_num_threads() == restore_threads


def test_results_do_not_depend_on_thread_count(attn, restore_threads):
    rng = np.random.default_rng(0)
    layer = attn.Attention.random(LLAMA, seed=2)
    x = rng.standard_normal((3, 16, LLAMA["hidden_size"])).astype(np.float32)
    q = rng.standard_normal((3, 16, 8, 16)).astype(np.float32)
    k = rng.standard_normal((3, 16, 2, 16)).astype(np.float32)
    outputs = []
    for n in (1, 3):
        attn.set_num_threads(n)
        outputs.append((layer.forward(x), attn.attention(q, k, k)))
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[0][1], outputs[1][1], rtol=1e-5, atol=1e-6)


def test_set_num_threads_while_other_threads_compute(attn, restore_threads):
    """Computations release the GIL; resizing the pool waits for running calls instead of
    pulling threads from under them. Results stay right throughout."""
    rng = np.random.default_rng(1)
    layer = attn.Attention.random(LLAMA, seed=2)
    x = rng.standard_normal((2, 32, LLAMA["hidden_size"])).astype(np.float32)
    expected = layer.forward(x)
    errors = []
    stop = threading.Event()

    def compute():
        try:
            while not stop.is_set():
                np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-5, atol=1e-6)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=compute) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for i in range(40):
            attn.set_num_threads(1 + i % 4)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors, errors[0]
