// SPDX-License-Identifier: Apache-2.0
// The DLPack C ABI (https://dmlc.github.io/dlpack/latest/c_api.html), declared here because
// Debian ships no header for it. Only what a consumer of `obj.__dlpack__()` reads: the
// unversioned DLManagedTensor that PyTorch 1.x and NumPy hand out in a "dltensor" capsule.
#ifndef ATTN_PYTHON_DLPACK_ABI_H_
#define ATTN_PYTHON_DLPACK_ABI_H_

#include <cstdint>

namespace attn::python::dlpack {

// Capsule names of the protocol: a fresh tensor, and one whose ownership a consumer took.
inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kUsedCapsuleName = "used_dltensor";

inline constexpr int32_t kDeviceCpu = 1;

// DLDataTypeCode.
inline constexpr uint8_t kInt = 0;
inline constexpr uint8_t kUInt = 1;
inline constexpr uint8_t kFloat = 2;
inline constexpr uint8_t kBfloat = 4;
inline constexpr uint8_t kBool = 6;

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null = compact row-major
  uint64_t byte_offset;
};

struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

}  // namespace attn::python::dlpack

#endif  // ATTN_PYTHON_DLPACK_ABI_H_
