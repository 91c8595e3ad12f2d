// Tensor: shared storage + element offset + shape + strides + dtype + device, and the
// autograd metadata (requires_grad, .grad, the node that produced it). Op outputs are
// contiguous; narrow and reshape return views that share storage. Copying a Tensor copies a
// handle, never data.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "autograd/allocator.h"
#include "autograd/device.h"
#include "kernels/common.h"

namespace ssmtrain {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

class Generator;
class Node;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  // A CPU tensor in page-locked memory (ordinary memory without a GPU), for async copies.
  static Tensor empty_pinned(const Shape& shape, DType dtype);
  // Host values converted to dtype (bf16/f16 rounded to nearest even) and placed on device.
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape,
                            DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::f64, Device device = Device::cpu());
  static Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape,
                            DType dtype = DType::i64, Device device = Device::cpu());
  // Philox draws (same bits on CPU and GPU for the same generator state); float dtypes.
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32,
                      Device device = Device::cpu(), float mean = 0.0f, float std = 1.0f);
  static Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::f32,
                     Device device = Device::cpu(), float low = 0.0f, float high = 1.0f);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  bool is_contiguous() const;
  int64_t offset() const;
  int64_t nbytes() const { return numel() * dtype_size(dtype()); }
  std::string str() const;  // "f32[2, 3] on cuda:0"

  // Pointer to the first element (storage + offset). Typed access checks the dtype.
  void* data() const;
  template <typename T> T* data_ptr() const;
  const std::shared_ptr<Storage>& storage() const;
  bool shares_storage_with(const Tensor& other) const;

  // ---- conversions (differentiable unless noted) ----
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor contiguous() const;
  Tensor clone() const;  // a contiguous copy with its own storage
  // Host copy converted to T (float, double or int64_t); synchronises with the device.
  template <typename T> std::vector<T> values() const;
  std::vector<float> to_vector() const { return values<float>(); }
  double item() const;  // the single element of a one-element tensor

  // ---- autograd ----
  bool requires_grad() const;
  // Marks a leaf as needing a gradient; throws on a non-leaf.
  Tensor& set_requires_grad(bool needed = true);
  bool is_leaf() const;
  // The accumulated gradient of a leaf (undefined until a backward reached it).
  Tensor grad() const;
  void set_grad(const Tensor& grad) const;
  void zero_grad() const;  // drops .grad
  // Backpropagates from this tensor. `grad` defaults to ones for a one-element tensor.
  void backward(const Tensor& grad = Tensor()) const;
  // Same data, cut from the graph.
  Tensor detach() const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::f32;
  Device device;

  bool requires_grad = false;  // for leaves; a non-leaf requires grad through grad_fn
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
  std::shared_ptr<Node> grad_accumulator;  // leaves: created on first use in a graph
};

Shape contiguous_strides(const Shape& shape);

// Makes a tensor over existing storage (a view); no data is copied.
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

// Copies src into dst (same shape; any dtypes, devices and strides). Not differentiable.
// Synchronous: when it returns, src may be changed or freed.
void copy_into(const Tensor& dst, const Tensor& src);

// Host-to-device or device-to-host copy of contiguous tensors of one dtype, queued on the
// current stream of the GPU side without waiting. The caller keeps both alive and unchanged
// until that stream has passed the copy (record an Event). Pinned host memory makes it
// truly asynchronous.
void copy_into_async(const Tensor& dst, const Tensor& src);

}  // namespace ssmtrain
