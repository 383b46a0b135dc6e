// The pieces of the `attn._attn` extension module, each adding its names to the module.
#ifndef ATTN_PYTHON_BINDINGS_H_
#define ATTN_PYTHON_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <string>

#include "attn/config.h"

namespace attn::python {

namespace py = pybind11;

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
