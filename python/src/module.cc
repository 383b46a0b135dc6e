// SPDX-License-Identifier: Apache-2.0
// The extension module attn._attn, re-exported by the attn package (python/attn/__init__.py).
#include <pybind11/pybind11.h>

#include <exception>
#include <mutex>
#include <shared_mutex>

#include "arrays.h"
#include "attn/error.h"
#include "attn/kernels.h"
#include "attn/threads.h"
#include "attn/version.h"
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
    case ErrorKind::kCommunication:
      return PyExc_RuntimeError;
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

std::shared_mutex& ThreadCountMutex() {
  static std::shared_mutex mutex;
  return mutex;
}

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
  // The linked library's version (not the header's macro), so that it always describes the
  // code that runs; the number itself comes from project(VERSION) in CMakeLists.txt.
  module.attr("__version__") = attn::Version();
  module.def(
      "set_num_threads",
      [](int n) {
        // Waits, without the GIL, for running calls to finish before resizing the pool.
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> lock(attn::python::ThreadCountMutex());
        attn::SetNumThreads(n);
      },
      py::arg("n"),
      "Sets the number of threads the kernels and layers use (the calling thread "
      "included); n >= 1, else ValueError. Applies process-wide, like the "
      "ATTN_NUM_THREADS environment variable read at start-up. Waits for calls running in "
      "other threads to finish first.");
  module.def(
      "get_num_threads",
      [] {
        attn::python::ComputeScope steady;
        return attn::NumThreads();
      },
      "The number of threads the kernels and layers use (the calling thread included): "
      "the machine's cores, $ATTN_NUM_THREADS, or the last set_num_threads().");
  module.def("_copies_made", &attn::python::CopiesMade,
             "Input copies the binding has made so far (layout or dtype conversions, hidden "
             "states, weights). For tests of the zero-copy paths.");
}
