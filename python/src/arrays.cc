// SPDX-License-Identifier: Apache-2.0
#include "arrays.h"

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "dlpack_abi.h"

namespace attn::python {
namespace {

std::atomic<uint64_t> copies_made{0};

struct ElementEntry {
  Element element;
  const char* name;
  size_t size;
  bool floating;
};

constexpr ElementEntry kElements[] = {
    {Element::kF32, "float32", 4, true},   {Element::kF16, "float16", 2, true},
    {Element::kBF16, "bfloat16", 2, true}, {Element::kF64, "float64", 8, true},
    {Element::kI64, "int64", 8, false},    {Element::kI32, "int32", 4, false},
    {Element::kI16, "int16", 2, false},    {Element::kI8, "int8", 1, false},
    {Element::kU8, "uint8", 1, false},     {Element::kBool, "bool", 1, false},
};

const ElementEntry& Lookup(Element element) {
  for (const ElementEntry& entry : kElements) {
    if (entry.element == element) return entry;
  }
  throw Error(ErrorKind::kInvalidArgument, "invalid element type");
}

template <typename T>
T LoadAs(const std::byte* at) {
  T value;
  std::memcpy(&value, at, sizeof(value));
  return value;
}

template <typename T>
void StoreAs(std::byte* at, T value) {
  std::memcpy(at, &value, sizeof(value));
}

bool IsIntegerLike(Element element) { return !IsFloating(element); }

// Any element as a double (exact for every float type and for integers below 2^53).
double LoadNumber(Element element, const std::byte* at) {
  switch (element) {
    case Element::kF32:
      return LoadAs<float>(at);
    case Element::kF16:
      return F16ToF32(LoadAs<uint16_t>(at));
    case Element::kBF16:
      return BF16ToF32(LoadAs<uint16_t>(at));
    case Element::kF64:
      return LoadAs<double>(at);
    case Element::kI64:
      return static_cast<double>(LoadAs<int64_t>(at));
    case Element::kI32:
      return LoadAs<int32_t>(at);
    case Element::kI16:
      return LoadAs<int16_t>(at);
    case Element::kI8:
      return LoadAs<int8_t>(at);
    case Element::kU8:
    case Element::kBool:
      return LoadAs<uint8_t>(at);
  }
  return 0.0;
}

int64_t LoadInteger(Element element, const std::byte* at) {
  switch (element) {
    case Element::kI64:
      return LoadAs<int64_t>(at);
    case Element::kI32:
      return LoadAs<int32_t>(at);
    case Element::kI16:
      return LoadAs<int16_t>(at);
    case Element::kI8:
      return LoadAs<int8_t>(at);
    case Element::kU8:
    case Element::kBool:
      return LoadAs<uint8_t>(at);
    default:
      throw Error(ErrorKind::kInvalidArgument, "not an integer element type");
  }
}

// Converts one element. `to` is `from`, a float type (from a float), or an integer type (from
// an integer, or from a float already checked to be integral).
void ConvertElement(Element from, const std::byte* source, Element to, std::byte* target) {
  if (from == to) {
    std::memcpy(target, source, ElementSize(from));
    return;
  }
  if (IsIntegerLike(from) && IsIntegerLike(to)) {
    const int64_t value = LoadInteger(from, source);
    switch (to) {
      case Element::kI64:
        return StoreAs<int64_t>(target, value);
      case Element::kU8:
        return StoreAs<uint8_t>(target, static_cast<uint8_t>(value));
      default:
        throw Error(ErrorKind::kInvalidArgument, "unsupported integer conversion");
    }
  }
  const double value = LoadNumber(from, source);
  switch (to) {
    case Element::kF32:
      return StoreAs<float>(target, static_cast<float>(value));
    case Element::kF16:
      return StoreAs<uint16_t>(target, F32ToF16(static_cast<float>(value)));
    case Element::kBF16:
      return StoreAs<uint16_t>(target, F32ToBF16(static_cast<float>(value)));
    case Element::kF64:
      return StoreAs<double>(target, value);
    case Element::kI64:
      return StoreAs<int64_t>(target, static_cast<int64_t>(value));
    case Element::kU8:
      return StoreAs<uint8_t>(target, static_cast<uint8_t>(value));
    default:
      throw Error(ErrorKind::kInvalidArgument, "unsupported element conversion");
  }
}

// Calls fn(flat, element pointer, index) for every element in row-major order.
template <typename Fn>
void ForEachElement(const ArrayView& view, Fn&& fn) {
  const int64_t count = view.size();
  const size_t element_size = ElementSize(view.element);
  const int rank = view.rank();
  std::vector<int64_t> index(static_cast<size_t>(rank), 0);
  int64_t offset = 0;  // elements
  for (int64_t flat = 0; flat < count; ++flat) {
    fn(flat, view.data + offset * static_cast<int64_t>(element_size), index);
    for (int axis = rank - 1; axis >= 0; --axis) {
      const size_t a = static_cast<size_t>(axis);
      ++index[a];
      offset += view.strides[a];
      if (index[a] < view.shape[a]) break;
      offset -= view.strides[a] * view.shape[a];
      index[a] = 0;
    }
  }
}

std::string IndexText(const std::vector<int64_t>& index) { return ShapeToString(index); }

std::vector<int64_t> RowMajorStrides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (size_t axis = shape.size(); axis-- > 1;) {
    strides[axis - 1] = strides[axis] * shape[axis];
  }
  return strides;
}

// NumPy arrays are read through `__array_interface__` (NumPy's documented Python-level
// description: data pointer, read-only flag, shape, byte strides, and the dtype as a typestr
// such as "<f4") rather than through pybind11's py::dtype/py::array accessors. Those read the C
// struct PyArray_Descr, whose layout NumPy 2 changed (the item size moved and widened):
// pybind11 before 2.12 then reports a wrong item size and every array is refused. The Python
// interface is the same under NumPy 1.x and 2.x, whichever pybind11 the module was built with.
struct NumpyInterface {
  Element element = Element::kF32;
  size_t item = 0;  // bytes per element
  std::byte* data = nullptr;
  bool readonly = true;
  std::vector<int64_t> shape;
  std::vector<int64_t> byte_strides;  // empty: C-contiguous
};

bool IsNativeOrder(char order) {
  // '|': byte order does not apply (1-byte items); '=': native, spelled explicitly.
  if (order == '|' || order == '=') return true;
  return order == (std::endian::native == std::endian::little ? '<' : '>');
}

// The element of a typestr ("<f4", "|b1", …), or nothing for a dtype attn does not read.
std::optional<Element> TypestrElement(const std::string& typestr) {
  if (typestr.size() < 3 || !IsNativeOrder(typestr[0])) return std::nullopt;
  const char kind = typestr[1];
  const std::string size = typestr.substr(2);
  if (kind == 'f' && size == "4") return Element::kF32;
  if (kind == 'f' && size == "2") return Element::kF16;
  if (kind == 'f' && size == "8") return Element::kF64;
  if (kind == 'i' && size == "8") return Element::kI64;
  if (kind == 'i' && size == "4") return Element::kI32;
  if (kind == 'i' && size == "2") return Element::kI16;
  if (kind == 'i' && size == "1") return Element::kI8;
  if (kind == 'u' && size == "1") return Element::kU8;
  if (kind == 'b' && size == "1") return Element::kBool;
  return std::nullopt;
}

NumpyInterface ReadNumpyInterface(const py::object& array, const std::string& what) {
  const py::dict interface = array.attr("__array_interface__");
  // An ndarray subclass can override __array_interface__, so its form is checked before
  // anything is read: a failed cast would surface as RuntimeError and a short strides tuple
  // would be indexed past its end. Only the pointer itself is trusted, as NumPy trusts it.
  const auto malformed = [&](const std::string& why) {
    return Error(ErrorKind::kInvalidArgument, what + ": malformed __array_interface__: " + why);
  };
  for (const char* key : {"typestr", "shape", "data"}) {
    if (!interface.contains(key)) throw malformed(std::string("no '") + key + "' entry");
  }
  if (!py::isinstance<py::str>(interface["typestr"])) throw malformed("'typestr' is not a str");
  if (!py::isinstance<py::tuple>(interface["shape"])) throw malformed("'shape' is not a tuple");
  const py::object data_entry = interface["data"];
  if (!py::isinstance<py::tuple>(data_entry) || py::len(data_entry) != 2 ||
      !py::isinstance<py::int_>(py::tuple(data_entry)[0])) {
    throw malformed("'data' is not a (pointer, read-only) tuple");
  }
  const py::object strides_entry =
      interface.contains("strides") ? py::object(interface["strides"]) : py::object(py::none());
  if (!strides_entry.is_none() && (!py::isinstance<py::tuple>(strides_entry) ||
                                   py::len(strides_entry) != py::len(interface["shape"]))) {
    throw malformed("'strides' is not None or a tuple as long as 'shape'");
  }
  const std::string typestr = interface["typestr"].cast<std::string>();
  const std::optional<Element> element = TypestrElement(typestr);
  if (!element) {
    throw Error(ErrorKind::kInvalidArgument,
                what + ": unsupported dtype " +
                    array.attr("dtype").attr("name").cast<std::string>() + " ('" + typestr +
                    "'; supported: float32, float16, bfloat16 (torch), float64, int64, int32, "
                    "int16, int8, uint8, bool, in native byte order)");
  }
  NumpyInterface result;
  result.element = *element;
  result.item = ElementSize(*element);
  const py::tuple data = data_entry;
  try {
    result.data = reinterpret_cast<std::byte*>(data[0].cast<uintptr_t>());
    result.readonly = data[1].cast<bool>();
    for (const py::handle extent : interface["shape"]) {
      result.shape.push_back(extent.cast<int64_t>());
      if (result.shape.back() < 0) throw malformed("negative extent");
    }
    if (!strides_entry.is_none()) {
      for (const py::handle stride : strides_entry) {
        result.byte_strides.push_back(stride.cast<int64_t>());
      }
    }
  } catch (const py::cast_error&) {
    throw malformed("a pointer, extent, stride or read-only flag of the wrong type or range");
  }
  return result;
}

ArrayView ViewNumpy(py::object array, const std::string& what) {
  NumpyInterface interface = ReadNumpyInterface(array, what);
  const auto item = static_cast<int64_t>(interface.item);
  bool copied = false;
  for (const int64_t stride : interface.byte_strides) {
    if (stride % item != 0) {
      // Byte strides that are not whole elements (views into record arrays): copy once.
      copied = true;
      copies_made.fetch_add(1);
      array = py::module_::import("numpy").attr("ascontiguousarray")(array);
      interface = ReadNumpyInterface(array, what);
      break;
    }
  }
  ArrayView view;
  view.what = what;
  view.element = interface.element;
  view.data = interface.data;
  // A copy is never writable: out= written into it would never reach the caller's array.
  view.writable = !interface.readonly && !copied;
  view.shape = std::move(interface.shape);
  if (interface.byte_strides.empty()) {
    view.strides = RowMajorStrides(view.shape);
  } else {
    for (const int64_t stride : interface.byte_strides) view.strides.push_back(stride / item);
  }
  view.keepalive = std::move(array);
  return view;
}

Element DlpackElement(const dlpack::DataType& type, const std::string& what) {
  Check(type.lanes == 1, ErrorKind::kInvalidArgument,
        what + ": vector element types are not supported");
  if (type.code == dlpack::kFloat && type.bits == 32) return Element::kF32;
  if (type.code == dlpack::kFloat && type.bits == 16) return Element::kF16;
  if (type.code == dlpack::kFloat && type.bits == 64) return Element::kF64;
  if (type.code == dlpack::kBfloat && type.bits == 16) return Element::kBF16;
  if (type.code == dlpack::kInt && type.bits == 64) return Element::kI64;
  if (type.code == dlpack::kInt && type.bits == 32) return Element::kI32;
  if (type.code == dlpack::kInt && type.bits == 16) return Element::kI16;
  if (type.code == dlpack::kInt && type.bits == 8) return Element::kI8;
  if (type.code == dlpack::kUInt && type.bits == 8) return Element::kU8;
  if (type.code == dlpack::kBool && type.bits == 8) return Element::kBool;
  throw Error(ErrorKind::kInvalidArgument, what + ": unsupported DLPack dtype (code " +
                                               std::to_string(type.code) + ", " +
                                               std::to_string(type.bits) + " bits)");
}

// Takes ownership of the DLManagedTensor in `capsule` (renaming it as the protocol asks).
ArrayView ViewDlpack(py::object producer, py::object capsule, const std::string& what) {
  PyObject* raw = capsule.ptr();
  Check(PyCapsule_IsValid(raw, dlpack::kCapsuleName) != 0, ErrorKind::kInvalidArgument,
        what + ": __dlpack__() did not return an unused \"dltensor\" capsule");
  auto* managed =
      static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(raw, dlpack::kCapsuleName));
  if (managed == nullptr || PyCapsule_SetName(raw, dlpack::kUsedCapsuleName) != 0) {
    throw py::error_already_set();
  }
  ArrayView view;
  view.owner = std::shared_ptr<void>(managed, [](void* pointer) {
    auto* tensor = static_cast<dlpack::ManagedTensor*>(pointer);
    if (tensor->deleter != nullptr) tensor->deleter(tensor);
  });
  const dlpack::Tensor& tensor = managed->dl_tensor;
  Check(tensor.device.device_type == dlpack::kDeviceCpu, ErrorKind::kInvalidArgument,
        what + ": expected a CPU tensor (DLPack device type " +
            std::to_string(tensor.device.device_type) + ")");
  view.what = what;
  view.element = DlpackElement(tensor.dtype, what);
  view.data = static_cast<std::byte*>(tensor.data) + tensor.byte_offset;
  // Checked before the shape pointer is used: a negative ndim would read before the array.
  Check(tensor.ndim >= 0, ErrorKind::kInvalidArgument,
        what + ": DLPack tensor with negative ndim " + std::to_string(tensor.ndim));
  view.shape.assign(tensor.shape, tensor.shape + tensor.ndim);
  if (tensor.strides != nullptr) {
    view.strides.assign(tensor.strides, tensor.strides + tensor.ndim);
  } else {
    view.strides = RowMajorStrides(view.shape);
  }
  view.writable = true;  // DLPack 0.x has no read-only flag; only out= writes
  view.keepalive = std::move(producer);
  return view;
}

}  // namespace

const char* ElementName(Element element) { return Lookup(element).name; }
size_t ElementSize(Element element) { return Lookup(element).size; }
bool IsFloating(Element element) { return Lookup(element).floating; }

int64_t ArrayView::size() const { return NumElements(shape); }

bool ArrayView::IsRowMajor() const {
  int64_t expected = 1;
  for (size_t axis = shape.size(); axis-- > 0;) {
    if (shape[axis] != 1 && strides[axis] != expected) return false;
    expected *= shape[axis];
  }
  return true;
}

const std::byte* ArrayView::At(std::span<const int64_t> index) const {
  int64_t offset = 0;
  for (size_t axis = 0; axis < index.size(); ++axis) offset += index[axis] * strides[axis];
  return data + offset * static_cast<int64_t>(ElementSize(element));
}

bool IsTorchTensor(py::handle object) {
  const py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return false;
  return py::isinstance(object, modules["torch"].attr("Tensor"));
}

// An object's own __array_interface__ whose typestr attn does not read is refused before NumPy
// builds an array from it: NumPy 2.4 builds an object-dtype array from such a dict without a
// 'data' entry and then crashes in garbage collection (found by tests/fuzz/fuzz_array_intake.py).
// The dict is otherwise left to NumPy, which also accepts forms attn's own reader does not
// (no 'data': the object's buffer; 'descr').
void RefuseUnreadableInterface(py::handle object, const std::string& what) {
  if (!py::hasattr(object, "__array_interface__")) return;
  const py::object interface = object.attr("__array_interface__");
  if (!py::isinstance<py::dict>(interface)) return;
  const py::dict entries = interface;
  if (!entries.contains("typestr") || !py::isinstance<py::str>(entries["typestr"])) return;
  const std::string typestr = entries["typestr"].cast<std::string>();
  Check(TypestrElement(typestr).has_value(), ErrorKind::kInvalidArgument,
        what + ": unsupported dtype in __array_interface__ ('" + typestr +
            "'; supported: float32, float16, float64, int64, int32, int16, int8, uint8, bool, "
            "in native byte order)");
}

ArrayView ViewArray(py::handle object, const std::string& what) {
  if (py::isinstance<py::array>(object)) {
    return ViewNumpy(py::reinterpret_borrow<py::object>(object), what);
  }
  if (IsTorchTensor(object)) {
    py::object tensor = py::reinterpret_borrow<py::object>(object);
    if (tensor.attr("requires_grad").cast<bool>()) tensor = tensor.attr("detach")();
    // A tensor with the negative or conjugate bit set is a lazy view whose memory holds the
    // values before negation/conjugation (z.conj().imag is one). DLPack has no such flag and
    // torch 1.x exports the memory as it is, so reading it would silently flip signs.
    // (is_neg/is_conj exist from torch 1.10 on; older tensors have neither bit.)
    Check(!py::hasattr(tensor, "is_neg") || !tensor.attr("is_neg")().cast<bool>(),
          ErrorKind::kInvalidArgument,
          what +
              ": tensor has the negative bit set (a lazily negated view such as "
              "z.conj().imag); pass t.resolve_neg()");
    Check(!py::hasattr(tensor, "is_conj") || !tensor.attr("is_conj")().cast<bool>(),
          ErrorKind::kInvalidArgument,
          what + ": tensor has the conjugate bit set; pass t.resolve_conj()");
    const py::module_ torch = py::module_::import("torch");
    // DLPack in torch 1.x cannot export bool; a uint8 view of the same bytes can.
    const bool is_bool = tensor.attr("dtype").is(torch.attr("bool"));
    if (is_bool) tensor = tensor.attr("view")(torch.attr("uint8"));
    py::object capsule = tensor.attr("__dlpack__")();
    ArrayView view = ViewDlpack(tensor, capsule, what);
    if (is_bool) view.element = Element::kBool;
    view.from_torch = true;
    return view;
  }
  if (py::hasattr(object, "__dlpack__")) {
    py::object producer = py::reinterpret_borrow<py::object>(object);
    return ViewDlpack(producer, producer.attr("__dlpack__")(), what);
  }
  // Lists, scalars, other array-likes: NumPy builds the array (that is not a copy of an array).
  RefuseUnreadableInterface(object, what);
  return ViewNumpy(py::module_::import("numpy").attr("asarray")(object), what);
}

ArrayView ToLayout(const ArrayView& view, Element element) {
  const size_t element_size = ElementSize(element);
  auto storage =
      std::make_shared<std::vector<std::byte>>(static_cast<size_t>(view.size()) * element_size);
  std::byte* target = storage->data();
  ForEachElement(view, [&](int64_t flat, const std::byte* source, const std::vector<int64_t>&) {
    ConvertElement(view.element, source, element,
                   target + flat * static_cast<int64_t>(element_size));
  });
  copies_made.fetch_add(1);
  ArrayView copy;
  copy.what = view.what;
  copy.element = element;
  copy.data = target;
  copy.shape = view.shape;
  copy.strides = RowMajorStrides(view.shape);
  copy.from_torch = view.from_torch;
  copy.writable = false;
  copy.owner = std::move(storage);
  return copy;
}

ArrayView RowMajor(const ArrayView& view, Element element) {
  if (view.element == element && view.IsRowMajor()) return view;
  return ToLayout(view, element);
}

void CheckRank(const ArrayView& view, int rank, const std::string& layout) {
  Check(view.rank() == rank, ErrorKind::kInvalidArgument,
        view.what + ": expected " + std::to_string(rank) + " dimensions " + layout + ", got " +
            std::to_string(view.rank()) + " (shape " + ShapeToString(view.shape) + ")");
}

void CheckFloating(const ArrayView& view) {
  Check(IsFloating(view.element), ErrorKind::kInvalidArgument,
        view.what +
            ": expected a floating-point dtype (float32, float16, bfloat16, float64), "
            "got " +
            ElementName(view.element));
}

bool AllFiniteFloats(const float* data, int64_t count) {
  // x·0 is 0 for every finite x and NaN for NaN/±Inf; a lane's sum stays 0 until one appears.
  constexpr int64_t kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += data[i + j] * 0.0f;
  }
  float total = 0.0f;
  for (; i < count; ++i) total += data[i] * 0.0f;
  for (const float lane : lanes) total += lane;
  return total == 0.0f;
}

// True when no 16-bit float has its exponent field all ones (NaN, ±Inf): `exponent_mask` is
// 0x7c00 for f16, 0x7f80 for bf16. Counting instead of returning early lets the loop vectorise.
bool AllFiniteHalves(const uint16_t* data, int64_t count, uint16_t exponent_mask) {
  int64_t special = 0;
  for (int64_t i = 0; i < count; ++i) special += (data[i] & exponent_mask) == exponent_mask;
  return special == 0;
}

void CheckFiniteView(const ArrayView& view) {
  CheckFloating(view);
  // Fast path: a contiguous float32/float16/bfloat16 array with nothing to report is checked at
  // memory speed; only a failing one is walked element by element to name the index.
  if (view.IsRowMajor()) {
    const bool finite =
        view.element == Element::kF32
            ? AllFiniteFloats(reinterpret_cast<const float*>(view.data), view.size())
        : view.element == Element::kF16 || view.element == Element::kBF16
            ? AllFiniteHalves(reinterpret_cast<const uint16_t*>(view.data), view.size(),
                              view.element == Element::kF16 ? 0x7c00 : 0x7f80)
            : false;
    if (finite) return;
  }
  ForEachElement(view, [&](int64_t, const std::byte* at, const std::vector<int64_t>& index) {
    const double value = LoadNumber(view.element, at);
    if (!std::isfinite(value)) {
      throw Error(ErrorKind::kInvalidArgument, view.what + ": non-finite value (" +
                                                   std::to_string(value) + ") at index " +
                                                   IndexText(index));
    }
  });
}

Tensor ToTensor(const ArrayView& view) {
  CheckFloating(view);
  std::vector<float> values(static_cast<size_t>(view.size()));
  ForEachElement(view, [&](int64_t flat, const std::byte* at, const std::vector<int64_t>&) {
    values[static_cast<size_t>(flat)] = static_cast<float>(LoadNumber(view.element, at));
  });
  copies_made.fetch_add(1);
  return Tensor(view.shape, std::move(values));
}

std::span<const int64_t> AsInt64(const ArrayView& view, ArrayView& holder) {
  Check(IsIntegerLike(view.element) && view.element != Element::kBool, ErrorKind::kInvalidArgument,
        view.what + ": expected an integer dtype, got " + ElementName(view.element));
  holder = RowMajor(view, Element::kI64);
  return {reinterpret_cast<const int64_t*>(holder.data), static_cast<size_t>(holder.size())};
}

std::span<const uint8_t> AsKeepFlags(const ArrayView& view, ArrayView& holder) {
  ForEachElement(view, [&](int64_t, const std::byte* at, const std::vector<int64_t>& index) {
    const double value = LoadNumber(view.element, at);
    if (value != 0.0 && value != 1.0) {
      throw Error(ErrorKind::kInvalidArgument,
                  view.what + ": values must be 0 (pad) or 1 (keep), got " + std::to_string(value) +
                      " at index " + IndexText(index));
    }
  });
  const bool bytes = view.element == Element::kU8 || view.element == Element::kBool;
  holder = RowMajor(view, bytes ? view.element : Element::kU8);
  return {reinterpret_cast<const uint8_t*>(holder.data), static_cast<size_t>(holder.size())};
}

py::object WrapTensor(Tensor tensor, bool as_torch) {
  auto* owned = new Tensor(std::move(tensor));
  py::capsule base(owned, [](void* pointer) { delete static_cast<Tensor*>(pointer); });
  std::vector<py::ssize_t> shape(owned->shape().begin(), owned->shape().end());
  py::array_t<float> array(shape, owned->data(), base);
  if (!as_torch) return array;
  return py::module_::import("torch").attr("from_numpy")(array);
}

py::object WrapTensorAs(Tensor tensor, Element element, bool as_torch) {
  if (element == Element::kF32) return WrapTensor(std::move(tensor), as_torch);
  std::vector<py::ssize_t> shape(tensor.shape().begin(), tensor.shape().end());
  const float* values = tensor.data();
  const int64_t count = tensor.size();
  switch (element) {
    case Element::kF64: {
      py::array_t<double> array(shape);
      double* out = array.mutable_data();
      for (int64_t i = 0; i < count; ++i) out[i] = values[i];
      if (!as_torch) return array;
      return py::module_::import("torch").attr("from_numpy")(array);
    }
    case Element::kF16: {
      // Filled as uint16 bits, then viewed as float16 by NumPy itself: pybind11 2.10 (Debian 12)
      // reads a py::dtype("float16")'s item size wrongly under NumPy 2, and every element would
      // be written to the same place.
      py::array_t<uint16_t> bits(shape);
      uint16_t* out = bits.mutable_data();
      for (int64_t i = 0; i < count; ++i) out[i] = F32ToF16(values[i]);
      py::object array = bits.attr("view")("float16");
      if (!as_torch) return array;
      return py::module_::import("torch").attr("from_numpy")(array);
    }
    case Element::kBF16: {
      // NumPy has no bfloat16: the bits travel as uint16 and torch reinterprets them. A bf16
      // input that is not a torch tensor (DLPack from elsewhere) gets float32 back.
      if (!as_torch) return WrapTensor(std::move(tensor), false);
      // int16, not uint16: older torch.from_numpy refuses uint16 arrays; the bits are the same.
      py::array_t<int16_t> array(shape);
      auto* out = reinterpret_cast<uint16_t*>(array.mutable_data());
      for (int64_t i = 0; i < count; ++i) out[i] = F32ToBF16(values[i]);
      py::module_ torch = py::module_::import("torch");
      return torch.attr("from_numpy")(array).attr("view")(torch.attr("bfloat16"));
    }
    default:
      return WrapTensor(std::move(tensor), as_torch);
  }
}

uint64_t CopiesMade() { return copies_made.load(); }

DType StorageDType(Element element) {
  switch (element) {
    case Element::kF32:
      return DType::kF32;
    case Element::kF16:
      return DType::kF16;
    case Element::kBF16:
      return DType::kBF16;
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string("no storage dtype for ") + ElementName(element));
  }
}

}  // namespace attn::python
