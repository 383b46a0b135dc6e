// The extension module attn._attn, re-exported by the attn package (python/attn/__init__.py).
#include <pybind11/pybind11.h>

#include <exception>

#include "arrays.h"
#include "attn/error.h"
#include "attn/kernels.h"
#include "bindings.h"

namespace attn::python {
namespace {

// attn::Error kinds as the Python exceptions a caller expects, with the C++ message.
PyObject* ExceptionFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kUnsupported:
    case ErrorKind::kCapacity:
      return PyExc_ValueError;
    case ErrorKind::kNotFound:
      return PyExc_KeyError;
    case ErrorKind::kIo:
    case ErrorKind::kCorruptFile:
      return PyExc_OSError;
  }
  return PyExc_RuntimeError;
}

void TranslateError(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const Error& e) {
    PyErr_SetString(ExceptionFor(e.kind()), e.what());
  }
}

}  // namespace
}  // namespace attn::python

PYBIND11_MODULE(_attn, module) {
  namespace py = pybind11;
  module.doc() =
      "attn: LLM attention (MHA/GQA/MQA, DeepSeek MLA) exactly as checkpoints define it, on "
      "NumPy arrays and PyTorch CPU tensors.";
  py::register_exception_translator(&attn::python::TranslateError);
  attn::python::BindLayers(module);
  attn::python::BindKernels(module);
  attn::python::BindInfo(module);
  module.def(
      "backend", [] { return attn::DefaultBackend().name; },
      "Name of the kernel backend the layers and attention() use.");
  module.def("_copies_made", &attn::python::CopiesMade,
             "Input copies the binding has made so far (layout or dtype conversions, hidden "
             "states, weights). For tests of the zero-copy paths.");
}
