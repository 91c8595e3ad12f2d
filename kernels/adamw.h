// Multi-tensor AdamW and gradient-norm kernels: one launch updates a whole list of parameters
// (f32 master weights and moments, gradients in f32 or bf16, optionally writing a bf16 copy
// of each updated weight for the next forward), and one launch gives the global sum of
// squares of a list of gradients (per-chunk partials, then one ordered sum: deterministic).
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

// The scalars of one AdamW step. With bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t:
//   g = grad * grad_scale
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr * ((m / c1) / (sqrt(v / c2) + eps) + weight_decay * p)   (decay only where flagged)
struct AdamWStep {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0;
  double bias_correction1 = 1;  // 1 - beta1^t
  double bias_correction2 = 1;  // 1 - beta2^t
  double grad_scale = 1;        // clipping folded into the update (1: none)
};

// One parameter tensor of numel elements: value, its gradient and moments (all contiguous).
template <typename Param, typename Grad>
struct AdamWTensor {
  Param* param = nullptr;
  const Grad* grad = nullptr;
  Param* exp_avg = nullptr;
  Param* exp_avg_sq = nullptr;
  void* param_copy = nullptr;  // GPU only: bf16 (numel) written with the updated value, or null
  int64_t numel = 0;
  bool weight_decay = false;
};

namespace cpu {
// Updates every tensor of the list in place (param, exp_avg, exp_avg_sq), arithmetic in
// double; param_copy is ignored on the CPU.
template <typename T>
void adamw_step(const AdamWTensor<T, T>* tensors, int64_t count, const AdamWStep& step);
// Sum over the list of sum(x^2), in double, tensor by tensor and element by element in order.
template <typename T>
double sum_squares(const T* const* tensors, const int64_t* numels, int64_t count);
// x *= scale for every tensor of the list.
template <typename T>
void scale(T* const* tensors, const int64_t* numels, int64_t count, double scale);
}  // namespace cpu

namespace cuda {
// Param and moments are f32; grad_dtype (f32 or bf16) is the dtype of every gradient of the
// list; param_copy, where not null, is bf16. One launch over fixed-size chunks of every
// tensor (the tensor list travels to the device with the launch). Elementwise: same bits on
// every run, and the same as updating each tensor alone.
void adamw_step(DType grad_dtype, const AdamWTensor<float, void>* tensors, int64_t count,
                const AdamWStep& step, cudaStream_t s);
// *result (one f32 on the device) = sum over the list of sum(x^2), x of dtype (f32 or bf16).
// Each fixed-size chunk of each tensor gives one f32 partial; one block then adds the partials
// in a fixed order (in double), so the bits depend only on the tensors' sizes and values.
void sum_squares(DType dtype, const void* const* tensors, const int64_t* numels, int64_t count,
                 float* result, cudaStream_t s);
// x *= scale for every tensor of the list (dtype f32 or bf16), one launch.
void scale(DType dtype, void* const* tensors, const int64_t* numels, int64_t count, float scale,
           cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
