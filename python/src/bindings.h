// SPDX-License-Identifier: Apache-2.0
// The pieces of the `attn._attn` extension module, each adding its names to the module.
#ifndef ATTN_PYTHON_BINDINGS_H_
#define ATTN_PYTHON_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <shared_mutex>
#include <string>

#include "attn/config.h"

namespace attn::python {

namespace py = pybind11;

// Held (shared) by every call that computes, exclusively by set_num_threads():
// attn::SetNumThreads must not resize the thread pool while a kernel runs on it, and calls
// compute with the GIL released, so another Python thread could otherwise do exactly that.
std::shared_mutex& ThreadCountMutex();

// The scope of a computation: the GIL released, the thread count held steady.
class ComputeScope {
 public:
  ComputeScope() : threads_(ThreadCountMutex()) {}

 private:
  // Declared first so that it is destroyed last: the lock is dropped before the GIL is taken
  // back, so a set_num_threads() waiting for the lock never waits on the GIL holder.
  py::gil_scoped_release release_;
  std::shared_lock<std::shared_mutex> threads_;
};

// A config from a dict (serialised with json.dumps), JSON text, a config.json path or a
// directory holding one, or a preset name (attn/presets.h).
ModelConfig ResolveConfig(py::handle config);
// LoadPreset(name), for ResolveConfig.
ModelConfig PresetConfig(const std::string& name);

// Attention, Cache, random_weights, load_safetensors.
void BindLayers(py::module_& module);
// attention, mla_attention.
void BindKernels(py::module_& module);
// info, presets.
void BindInfo(py::module_& module);

}  // namespace attn::python

#endif  // ATTN_PYTHON_BINDINGS_H_
