// GPU tests of kernels/adamw.h: the multi-tensor AdamW step against the CPU reference over a
// list of odd and even sizes around the chunk size (some misaligned), with f32 and bf16
// gradients and the bf16 weight copy; one launch over the list equals one launch per tensor
// bit for bit; the list sum of squares against the CPU and bitwise repeatable; list scaling.
#include "kernels/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::close;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download;
using ssmtrain::testing::download_bytes;
using ssmtrain::testing::random_vector;
using ssmtrain::testing::round_to;
using ssmtrain::testing::upload;

const std::vector<int64_t> kSizes = {1, 7, 16383, 16384, 16385, 100003, 64};
// Elements of padding in front of tensor t: odd ones start off a 16-byte boundary.
int64_t offset_of(size_t t) { return t % 3 == 1 ? 1 : 0; }

AdamWStep make_step(int step) {
  AdamWStep h;
  h.lr = 3e-3;
  h.beta1 = 0.9;
  h.beta2 = 0.95;
  h.eps = 1e-8;
  h.weight_decay = 0.1;
  h.bias_correction1 = 1 - std::pow(h.beta1, step);
  h.bias_correction2 = 1 - std::pow(h.beta2, step);
  h.grad_scale = step == 2 ? 0.5 : 1.0;
  return h;
}

// Device copies of one tensor's state, padded by offset elements.
struct DeviceTensor {
  int64_t numel, offset;
  DeviceBuffer param, grad, m, v, copy;
  char* at(const DeviceBuffer& b, DType dtype) const {
    return static_cast<char*>(b.get()) + offset * dtype_size(dtype);
  }
};

std::vector<float> pad(int64_t offset, const std::vector<float>& v) {
  std::vector<float> out(size_t(offset), 0.0f);
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

TEST(AdamWGpu, ListStepMatchesCpu) {
  SSM_REQUIRE_GPU();
  for (DType grad_dtype : {DType::f32, DType::bf16}) {
    const size_t count = kSizes.size();
    std::vector<std::vector<float>> p(count), m(count), v(count);
    std::vector<DeviceTensor> dev;
    for (size_t t = 0; t < count; ++t) {
      const int64_t n = kSizes[t], off = offset_of(t);
      p[t] = random_vector(n, 10 + t);
      m[t] = std::vector<float>(size_t(n), 0.0f);
      v[t] = m[t];
      dev.push_back({n, off, upload(pad(off, p[t]), DType::f32), DeviceBuffer((n + off) * 4),
                     upload(pad(off, m[t]), DType::f32), upload(pad(off, v[t]), DType::f32),
                     DeviceBuffer((n + off) * 2)});
    }
    for (int step = 1; step <= 3; ++step) {
      const AdamWStep h = make_step(step);
      std::vector<AdamWTensor<float, float>> cpu_list;
      std::vector<AdamWTensor<float, void>> gpu_list;
      std::vector<std::vector<float>> g(count);
      for (size_t t = 0; t < count; ++t) {
        DeviceTensor& d = dev[t];
        g[t] = round_to(grad_dtype, random_vector(d.numel, 100 * step + t, 0.1f));
        d.grad = upload(pad(d.offset, g[t]), grad_dtype);
        cpu_list.push_back({p[t].data(), g[t].data(), m[t].data(), v[t].data(), nullptr, d.numel, t % 2 == 0});
        gpu_list.push_back({reinterpret_cast<float*>(d.at(d.param, DType::f32)), d.at(d.grad, grad_dtype),
                            reinterpret_cast<float*>(d.at(d.m, DType::f32)),
                            reinterpret_cast<float*>(d.at(d.v, DType::f32)), d.at(d.copy, DType::bf16), d.numel,
                            t % 2 == 0});
      }
      cpu::adamw_step<float>(cpu_list.data(), int64_t(count), h);
      cuda::adamw_step(grad_dtype, gpu_list.data(), int64_t(count), h, nullptr);
      for (size_t t = 0; t < count; ++t) {
        const DeviceTensor& d = dev[t];
        const std::string where = std::string(dtype_name(grad_dtype)) + " grads, tensor " + std::to_string(t) +
                                  " (" + std::to_string(d.numel) + "), step " + std::to_string(step);
        const std::vector<float> param = download(d.at(d.param, DType::f32), DType::f32, d.numel);
        EXPECT_TRUE(close(param, p[t], DType::f32, 1)) << "param " << where;
        EXPECT_TRUE(close(download(d.at(d.m, DType::f32), DType::f32, d.numel), m[t], DType::f32, 1))
            << "exp_avg " << where;
        EXPECT_TRUE(close(download(d.at(d.v, DType::f32), DType::f32, d.numel), v[t], DType::f32, 1))
            << "exp_avg_sq " << where;
        EXPECT_EQ(download(d.at(d.copy, DType::bf16), DType::bf16, d.numel), round_to(DType::bf16, param))
            << "bf16 copy " << where;
      }
    }
  }
}

// The same step from the same state: once as one list, once tensor by tensor.
TEST(AdamWGpu, OneLaunchEqualsPerTensorBitForBit) {
  SSM_REQUIRE_GPU();
  const AdamWStep h = make_step(5);
  std::vector<DeviceTensor> a, b;
  std::vector<AdamWTensor<float, void>> list_a, list_b;
  for (size_t t = 0; t < kSizes.size(); ++t) {
    const int64_t n = kSizes[t];
    for (std::vector<DeviceTensor>* set : {&a, &b})
      set->push_back({n, 0, upload(random_vector(n, 1 + t), DType::f32), upload(random_vector(n, 2 + t), DType::f32),
                      upload(random_vector(n, 3 + t, 0.1f), DType::f32),
                      upload(random_vector(n, 4 + t, 0.01f, 0.02f), DType::f32), DeviceBuffer(n * 2)});
  }
  for (size_t t = 0; t < kSizes.size(); ++t) {
    for (auto [set, list] : {std::pair{&a, &list_a}, std::pair{&b, &list_b}}) {
      DeviceTensor& d = (*set)[t];
      list->push_back({d.param.as<float>(), d.grad.get(), d.m.as<float>(), d.v.as<float>(), d.copy.get(), d.numel,
                       t % 2 == 1});
    }
  }
  cuda::adamw_step(DType::f32, list_a.data(), int64_t(list_a.size()), h, nullptr);
  for (const AdamWTensor<float, void>& one : list_b) cuda::adamw_step(DType::f32, &one, 1, h, nullptr);
  for (size_t t = 0; t < kSizes.size(); ++t) {
    const size_t bytes = size_t(kSizes[t]) * 4;
    EXPECT_EQ(download_bytes(a[t].param.get(), bytes), download_bytes(b[t].param.get(), bytes)) << t;
    EXPECT_EQ(download_bytes(a[t].v.get(), bytes), download_bytes(b[t].v.get(), bytes)) << t;
  }
}

TEST(AdamWGpu, SumSquaresAndScaleMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16}) {
    std::vector<std::vector<float>> host;
    std::vector<DeviceBuffer> dev;
    std::vector<const void*> ptrs;
    std::vector<void*> mptrs;
    std::vector<int64_t> numels;
    double ref = 0;
    int64_t total = 0;
    for (size_t t = 0; t < kSizes.size(); ++t) {
      const int64_t n = t == 2 ? 0 : kSizes[t], off = offset_of(t);  // one empty tensor
      host.push_back(round_to(dtype, random_vector(n, 20 + t)));
      for (float x : host.back()) ref += double(x) * double(x);
      dev.push_back(upload(pad(off, host.back()), dtype));
      ptrs.push_back(static_cast<char*>(dev.back().get()) + off * dtype_size(dtype));
      mptrs.push_back(const_cast<void*>(ptrs.back()));
      numels.push_back(n);
      total += n;
    }
    DeviceBuffer result[2] = {DeviceBuffer(4), DeviceBuffer(4)};
    for (int run = 0; run < 2; ++run)
      cuda::sum_squares(dtype, ptrs.data(), numels.data(), int64_t(ptrs.size()), result[run].as<float>(), nullptr);
    EXPECT_TRUE(close(download(result[0].get(), DType::f32, 1), {float(ref)}, DType::f32, total)) << dtype_name(dtype);
    EXPECT_EQ(download_bytes(result[0].get(), 4), download_bytes(result[1].get(), 4)) << dtype_name(dtype);

    cuda::scale(dtype, mptrs.data(), numels.data(), int64_t(mptrs.size()), 0.375f, nullptr);
    for (size_t t = 0; t < host.size(); ++t) {
      std::vector<float> want = host[t];
      for (float& x : want) x *= 0.375f;
      EXPECT_EQ(download(ptrs[t], dtype, numels[t]), round_to(dtype, want)) << dtype_name(dtype) << " tensor " << t;
    }
  }
  DeviceBuffer result(4);
  cuda::sum_squares(DType::f32, nullptr, nullptr, 0, result.as<float>(), nullptr);
  EXPECT_EQ(download(result.get(), DType::f32, 1)[0], 0.0f) << "empty list";
}

}  // namespace
