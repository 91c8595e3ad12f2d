// Tensor construction, metadata, views and cross-device / cross-dtype copies.
#include "autograd/tensor.h"

#include <sstream>
#include <stdexcept>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "kernels/copy.h"
#include "kernels/philox.h"

#if SSMTRAIN_WITH_CUDA
#include <cuda_runtime.h>

#include "autograd/stream.h"
#include "kernels/cuda/check.h"
#endif

namespace ssmtrain {

std::string shape_str(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("negative dimension in shape " + shape_str(shape));
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

// ---- factories ----

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  const int64_t n = shape_numel(shape);
  impl->storage = allocate_storage(static_cast<size_t>(n * dtype_size(dtype)), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  impl->device = device;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate_pinned_storage(static_cast<size_t>(shape_numel(shape) * dtype_size(dtype)));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  impl->device = Device::cpu();
  return Tensor(std::move(impl));
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cpu()) {
    kernels::cpu::fill(dtype, t.data(), t.numel(), value);
  } else {
    SSM_CUDA_BRANCH(t, kernels::cuda::fill(dtype, t.data(), t.numel(), value, stream));
  }
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

namespace {
template <typename V>
Tensor from_host(const std::vector<V>& values, const Shape& shape, DType host_dtype, DType dtype,
                 Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("from_vector: " + std::to_string(values.size()) +
                                " values for shape " + shape_str(shape));
  Tensor host = Tensor::empty(shape, host_dtype, Device::cpu());
  std::memcpy(host.data(), values.data(), values.size() * sizeof(V));
  if (host_dtype == dtype && device.is_cpu()) return host;
  Tensor out = Tensor::empty(shape, dtype, device);
  copy_into(out, host);
  return out;
}
}  // namespace

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype,
                           Device device) {
  return from_host(values, shape, DType::f32, dtype, device);
}
Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                           Device device) {
  return from_host(values, shape, DType::f64, dtype, device);
}
Tensor Tensor::from_vector(const std::vector<int64_t>& values, const Shape& shape, DType dtype,
                           Device device) {
  return from_host(values, shape, DType::i64, dtype, device);
}

namespace {
// Fills a float tensor with Philox draws; `normal` selects the distribution.
Tensor random_fill(const Shape& shape, Generator& gen, DType dtype, Device device, bool normal,
                   float a, float b) {
  const char* op = normal ? "randn" : "rand";
  if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f64)
    detail::op_error(op, std::string("supports f32, bf16 and f64, got ") + dtype_name(dtype));
  const int64_t n = shape_numel(shape);
  const uint64_t offset = gen.take(n);
  if (device.is_cuda() && dtype != DType::f64) {
    Tensor t = Tensor::empty(shape, dtype, device);
    SSM_CUDA_BRANCH(t, normal ? kernels::cuda::fill_normal(dtype, t.data(), n, gen.seed(), offset,
                                                           a, b, stream)
                              : kernels::cuda::fill_uniform(dtype, t.data(), n, gen.seed(), offset,
                                                            a, b, stream));
    return t;
  }
  // CPU draws are made in f32 (the same bits as the GPU's) and converted.
  Tensor f = Tensor::empty(shape, DType::f32, Device::cpu());
  if (normal) kernels::cpu::fill_normal(f.data_ptr<float>(), n, gen.seed(), offset, a, b);
  else kernels::cpu::fill_uniform(f.data_ptr<float>(), n, gen.seed(), offset, a, b);
  if (dtype == DType::f32 && device.is_cpu()) return f;
  Tensor out = Tensor::empty(shape, dtype, device);
  copy_into(out, f);
  return out;
}
}  // namespace

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype, Device device, float mean,
                     float std) {
  return random_fill(shape, gen, dtype, device, true, mean, std);
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, DType dtype, Device device, float low,
                    float high) {
  return random_fill(shape, gen, dtype, device, false, low, high);
}

// ---- metadata ----

namespace {
const TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  if (!impl) throw std::logic_error("use of an undefined tensor");
  return *impl;
}
}  // namespace

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).device; }
int64_t Tensor::offset() const { return checked(impl_).offset; }
int64_t Tensor::numel() const { return shape_numel(shape()); }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked(impl_).storage; }

int64_t Tensor::size(int64_t d) const {
  return shape()[detail::normalize_dim("size", d, dim())];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] != 1 && strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " on " + device().str();
}

void* Tensor::data() const {
  const TensorImpl& t = checked(impl_);
  return static_cast<char*>(t.storage->data) + t.offset * dtype_size(t.dtype);
}

template <typename T> T* Tensor::data_ptr() const {
  constexpr DType expected = std::is_same_v<T, float>     ? DType::f32
                             : std::is_same_v<T, double>  ? DType::f64
                             : std::is_same_v<T, int32_t> ? DType::i32
                             : std::is_same_v<T, int64_t> ? DType::i64
                             : std::is_same_v<T, uint8_t> ? DType::u8
                                                          : DType::bf16;
  static_assert(!std::is_same_v<T, uint16_t> || expected == DType::bf16);
  if (dtype() != expected && !(std::is_same_v<T, uint16_t> && dtype() == DType::f16))
    throw std::invalid_argument(std::string("data_ptr: tensor is ") + dtype_name(dtype()));
  return static_cast<T*>(data());
}
template float* Tensor::data_ptr<float>() const;
template double* Tensor::data_ptr<double>() const;
template int32_t* Tensor::data_ptr<int32_t>() const;
template int64_t* Tensor::data_ptr<int64_t>() const;
template uint8_t* Tensor::data_ptr<uint8_t>() const;
template uint16_t* Tensor::data_ptr<uint16_t>() const;

bool Tensor::shares_storage_with(const Tensor& other) const {
  return defined() && other.defined() && storage() == other.storage();
}

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->offset = offset;
  impl->shape = shape;
  impl->strides = strides;
  impl->dtype = base.dtype();
  impl->device = base.device();
  return Tensor(std::move(impl));
}

// ---- copies ----

namespace {
// dst <- src on one device with one dtype, any strides.
void copy_strided_same(const Tensor& dst, const Tensor& src) {
  const kernels::Layout sl = detail::layout_of(src), dl = detail::layout_of(dst);
  const int64_t elem = dtype_size(src.dtype());
  if (dst.device().is_cpu()) {
    kernels::cpu::copy_strided(src.data(), sl, dst.data(), dl, elem);
  } else {
    SSM_CUDA_BRANCH(dst, kernels::cuda::copy_strided(src.data(), sl, dst.data(), dl, elem, stream));
  }
}

// Contiguous copy of t in another dtype on t's device.
Tensor cast_contiguous(const Tensor& t, DType dtype) {
  Tensor out = Tensor::empty(t.shape(), dtype, t.device());
  if (t.device().is_cpu()) {
    kernels::cpu::cast(t.dtype(), t.data(), dtype, out.data(), t.numel());
  } else {
    SSM_CUDA_BRANCH(t, kernels::cuda::cast(t.dtype(), t.data(), dtype, out.data(), t.numel(), stream));
  }
  return out;
}

// Contiguous bytes of t moved to another device (same dtype).
Tensor move_contiguous(const Tensor& t, Device device) {
  Tensor out = Tensor::empty(t.shape(), t.dtype(), device);
#if SSMTRAIN_WITH_CUDA
  const size_t bytes = static_cast<size_t>(t.nbytes());
  if (bytes == 0) return out;
  if (t.device().is_cpu()) {  // host -> device
    DeviceGuard guard(device.index);
    cudaStream_t s = current_stream(device.index);
    SSM_CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data(), bytes, cudaMemcpyHostToDevice, s));
    SSM_CUDA_CHECK(cudaStreamSynchronize(s));  // the host buffer may go away after return
  } else if (device.is_cpu()) {  // device -> host
    DeviceGuard guard(t.device().index);
    cudaStream_t s = current_stream(t.device().index);
    SSM_CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data(), bytes, cudaMemcpyDeviceToHost, s));
    SSM_CUDA_CHECK(cudaStreamSynchronize(s));
  } else {  // device -> device
    synchronize(t.device().index);
    DeviceGuard guard(device.index);
    cudaStream_t s = current_stream(device.index);
    SSM_CUDA_CHECK(cudaMemcpyPeerAsync(out.data(), device.index, t.data(), t.device().index,
                                       bytes, s));
  }
  return out;
#else
  (void)out;
  throw std::runtime_error("ssmtrain was built without CUDA; cannot copy between " +
                           t.device().str() + " and " + device.str());
#endif
}
}  // namespace

void copy_into(const Tensor& dst, const Tensor& src) {
  if (dst.shape() != src.shape())
    throw std::invalid_argument("copy_into: shape " + shape_str(src.shape()) + " into " +
                                shape_str(dst.shape()));
  if (dst.numel() == 0) return;
  Tensor s = src;
  if (!(s.device() == dst.device())) {
    if (!s.is_contiguous()) {
      Tensor c = Tensor::empty(s.shape(), s.dtype(), s.device());
      copy_strided_same(c, s);
      s = c;
    }
    s = move_contiguous(s, dst.device());
  }
  if (s.dtype() != dst.dtype()) {
    if (!s.is_contiguous()) {
      Tensor c = Tensor::empty(s.shape(), s.dtype(), s.device());
      copy_strided_same(c, s);
      s = c;
    }
    s = cast_contiguous(s, dst.dtype());
  }
  copy_strided_same(dst, s);
}

void copy_into_async(const Tensor& dst, const Tensor& src) {
  if (dst.shape() != src.shape() || dst.dtype() != src.dtype() || !dst.is_contiguous() ||
      !src.is_contiguous() || dst.device().is_cuda() == src.device().is_cuda())
    throw std::invalid_argument("copy_into_async: needs contiguous tensors of one shape and dtype, one on "
                                "the host and one on a GPU; got " + src.str() + " into " + dst.str());
#if SSMTRAIN_WITH_CUDA
  const int device = dst.is_cuda() ? dst.device().index : src.device().index;
  DeviceGuard guard(device);
  const cudaMemcpyKind kind = dst.is_cuda() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  SSM_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), static_cast<size_t>(src.nbytes()), kind,
                                 current_stream(device)));
#else
  throw std::runtime_error("ssmtrain was built without CUDA; copy_into_async needs a GPU");
#endif
}

Tensor Tensor::to(Device device) const { return to_device(*this, device); }
Tensor Tensor::to(DType dtype) const { return cast(*this, dtype); }

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : ssmtrain::clone(*this); }

Tensor Tensor::clone() const { return ssmtrain::clone(*this); }

template <typename T> std::vector<T> Tensor::values() const {
  constexpr DType host_dtype = std::is_same_v<T, float>    ? DType::f32
                               : std::is_same_v<T, double> ? DType::f64
                                                           : DType::i64;
  Tensor host = Tensor::empty(shape(), host_dtype, Device::cpu());
  copy_into(host, *this);
  std::vector<T> out(static_cast<size_t>(numel()));
  std::memcpy(out.data(), host.data(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::values<float>() const;
template std::vector<double> Tensor::values<double>() const;
template std::vector<int64_t> Tensor::values<int64_t>() const;

double Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument("item: tensor " + str() + " has not one element");
  return values<double>()[0];
}

// ---- autograd ----

bool Tensor::requires_grad() const {
  const TensorImpl& t = checked(impl_);
  return t.requires_grad || t.grad_fn != nullptr;
}

Tensor& Tensor::set_requires_grad(bool needed) {
  TensorImpl& t = const_cast<TensorImpl&>(checked(impl_));
  if (t.grad_fn) throw std::logic_error("set_requires_grad: only leaves can be marked");
  if (needed && !dtype_is_float(t.dtype))
    throw std::invalid_argument(std::string("set_requires_grad: ") + dtype_name(t.dtype) +
                                " tensors cannot have gradients");
  t.requires_grad = needed;
  return *this;
}

bool Tensor::is_leaf() const { return checked(impl_).grad_fn == nullptr; }
Tensor Tensor::grad() const { return checked(impl_).grad; }
void Tensor::set_grad(const Tensor& grad) const { const_cast<TensorImpl&>(checked(impl_)).grad = grad; }
void Tensor::zero_grad() const { const_cast<TensorImpl&>(checked(impl_)).grad = Tensor(); }
const std::shared_ptr<Node>& Tensor::grad_fn() const { return checked(impl_).grad_fn; }
int Tensor::output_nr() const { return checked(impl_).output_nr; }

Tensor Tensor::detach() const {
  Tensor view = make_view(*this, shape(), strides(), offset());
  return view;
}

void Tensor::backward(const Tensor& grad) const {
  if (!requires_grad())
    throw std::logic_error("backward: " + str() + " does not require a gradient");
  Tensor g = grad;
  if (!g.defined()) {
    if (numel() != 1)
      throw std::invalid_argument("backward: an explicit gradient is needed for " + str());
    g = Tensor::ones(shape(), dtype(), device());
  }
  run_backward({*this}, {g});
}

}  // namespace ssmtrain
