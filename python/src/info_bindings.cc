// SPDX-License-Identifier: Apache-2.0
// attn.info and attn.presets: the numbers of `attn info --json` (attn/model_stats.h) and the
// built-in configs (attn/presets.h). Key names follow the CLI's JSON; the CLI's presentation
// fields (description, decode_bound, peak) are not part of the library and are left out.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "attn/error.h"
#include "attn/model_stats.h"
#include "attn/presets.h"
#include "bindings.h"

namespace attn::python {
namespace {

py::dict FormDict(const FormStats& form) {
  py::dict out;
  out["name"] = form.name;
  out["values_per_token_layer"] = form.values_per_token_layer;
  out["bytes_per_token_layer"] = form.bytes_per_token_layer;
  out["bytes_per_token_model"] = form.bytes_per_token_model;
  out["bytes_at_context"] = form.bytes_at_context;
  out["ratio_to_mha"] = form.ratio_to_mha;
  out["prefill_flops_per_token"] = form.prefill_flops_per_token;
  out["decode_flops_per_token"] = form.decode_flops_per_token;
  out["decode_intensity_flops_per_byte"] = form.decode_intensity;
  out["longest_context"] =
      form.longest_context >= 0 ? py::object(py::int_(form.longest_context)) : py::none();
  return out;
}

py::dict Info(py::handle config_arg, py::handle context, int64_t batch, const std::string& dtype,
              py::handle memory) {
  const ModelConfig config = ResolveConfig(config_arg);
  InfoOptions options;
  if (py::isinstance<py::str>(context)) {
    options.context = ParseTokenCount(context.cast<std::string>(), "context");
  } else if (!context.is_none()) {
    options.context = context.cast<int64_t>();
    Check(options.context >= 1, ErrorKind::kInvalidArgument,
          "context must be >= 1, got " + std::to_string(options.context));
  }
  options.batch = batch;
  options.dtype = StorageDTypeFromString(dtype);
  if (py::isinstance<py::str>(memory)) {
    options.memory_bytes = ParseByteSize(memory.cast<std::string>(), "memory");
  } else if (!memory.is_none()) {
    options.memory_bytes = memory.cast<double>();
  }
  Check(memory.is_none() || options.memory_bytes > 0.0, ErrorKind::kInvalidArgument,
        "memory: the budget must be > 0 bytes");
  ModelStats stats;
  {
    ComputeScope release;
    stats = ComputeModelStats(config, options);
  }
  py::list forms;
  for (const FormStats& form : stats.forms) forms.append(FormDict(form));
  py::dict out;
  out["model_type"] = stats.config.model_type;
  out["layers"] = stats.config.num_layers;
  out["context"] = stats.options.context;
  out["batch"] = stats.options.batch;
  out["dtype"] = dtype;
  out["memory_bytes"] = memory.is_none() ? py::object(py::none())
                                         : py::object(py::float_(stats.options.memory_bytes));
  out["attention_params_layer"] = stats.attention_params_layer;
  out["attention_params_model"] = stats.attention_params_model;
  out["mha_params_layer"] = stats.mha_params_layer;
  out["params_ratio_to_mha"] = stats.params_ratio_to_mha;
  out["forms"] = forms;
  out["mha_baseline"] = FormDict(stats.mha);
  return out;
}

}  // namespace

ModelConfig PresetConfig(const std::string& name) { return LoadPreset(name); }

void BindInfo(py::module_& module) {
  module.def("info", &Info, py::arg("config"), py::arg("context") = py::none(),
             py::arg("batch") = 1, py::arg("dtype") = "bf16", py::arg("memory") = py::none(),
             R"doc(
The numbers of `attn info --json` for one model, as a dict: attention parameters (per layer,
whole model, vs an MHA of the same hidden size and heads) and, per cache form the model can run
in ("forms") and for the MHA baseline ("mha_baseline"): cache values and bytes per token, bytes
at `context` x `batch` tokens, FLOPs per prefill and decode token, decode arithmetic intensity,
and the longest context fitting `memory`.

config: a preset name (see presets()), a dict, JSON text or a config.json path.
context: tokens (int) or text like "128k"; default the model's max_position_embeddings.
dtype: cache dtype 'f32', 'f16' or 'bf16'.
memory: KV-cache budget in bytes (number) or text like "80GiB"; default none.)doc");
  module.def("presets", &PresetNames,
             "Names of the built-in model configs, usable wherever a config is taken.");
}

}  // namespace attn::python
