// CPU kernel for the separable 3-D Gaussian blur of plugins/rs_sdf/blur.py (the smoothing
// G_sigma * V of randomized smoothing on a voxel grid).
//
// Same result as the pure-PyTorch paths (tests compare with them and with scipy): zero padding
// outside the grid, symmetric taps w[0..2r] (w[r] is the centre), one tap vector per axis.
//
// Memory traffic is what bounds a blur on CPU, so the three passes are fused into two sweeps
// over one output buffer:
//   sweep 1, per x-slice (parallel over slices): blur along z row by row into a zero-padded
//            slice scratch that stays in cache, then along y from that scratch into `out`;
//   sweep 2, per block of C columns of the (y, z) plane (parallel over blocks): gather the block
//            for every x into a zero-padded buffer (C contiguous floats per x), blur along x and
//            write it back in place.
// That is 2 reads + 2 writes of the grid (a pass-per-axis blur needs 3 + 3) and no temporary
// grid. Symmetric taps halve the multiplies: out = w_c x_0 + sum_k w_k (x_{+k} + x_{-k}); every
// axis uses one inner routine that keeps kVec outputs in registers over all taps and reads
// contiguous memory, so the compiler vectorises it. Zero padding makes every tap in range.
//
// Threading: at::parallel_for (torch's OpenMP pool, honours torch.set_num_threads).

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;  // columns per block in the x sweep
constexpr int kVec = 32;         // outputs accumulated in registers at a time

// out[i] = w_c c[i] + sum_{k=1..r} w_k (c[i + k s] + c[i - k s]) for i in [0, len).
// c must be readable (zero-padded) at offsets -r s .. (len - 1) + r s.
inline void conv(const float* __restrict c, int64_t s, int64_t len, float* __restrict out, const float* w,
                 int64_t r) {
  const float wc = w[r];
  int64_t i = 0;
  for (; i + kVec <= len; i += kVec) {
    float acc[kVec];
    for (int j = 0; j < kVec; ++j) acc[j] = wc * c[i + j];
    for (int64_t k = 1; k <= r; ++k) {
      const float wk = w[r + k];
      const float* a = c + i + k * s;
      const float* b = c + i - k * s;
      for (int j = 0; j < kVec; ++j) acc[j] += wk * (a[j] + b[j]);
    }
    for (int j = 0; j < kVec; ++j) out[i + j] = acc[j];
  }
  for (; i < len; ++i) {
    float acc = wc * c[i];
    for (int64_t k = 1; k <= r; ++k) acc += w[r + k] * (c[i + k * s] + c[i - k * s]);
    out[i] = acc;
  }
}

at::Tensor blur3d(const at::Tensor& v, const at::Tensor& w0, const at::Tensor& w1, const at::Tensor& w2) {
  TORCH_CHECK(v.dim() == 3 && v.scalar_type() == at::kFloat && v.is_contiguous() && v.device().is_cpu(),
              "blur3d: v must be a contiguous float32 CPU tensor (R0, R1, R2)");
  for (const at::Tensor* w : {&w0, &w1, &w2}) {
    TORCH_CHECK(w->dim() == 1 && w->numel() % 2 == 1 && w->scalar_type() == at::kFloat && w->is_contiguous(),
                "blur3d: taps must be contiguous float32 vectors of odd length");
  }
  const int64_t R0 = v.size(0), R1 = v.size(1), R2 = v.size(2), P = R1 * R2;
  const int64_t r0 = (w0.numel() - 1) / 2, r1 = (w1.numel() - 1) / 2, r2 = (w2.numel() - 1) / 2;
  const float *pw0 = w0.data_ptr<float>(), *pw1 = w1.data_ptr<float>(), *pw2 = w2.data_ptr<float>();
  const float* src = v.data_ptr<float>();
  at::Tensor out = at::empty({R0, R1, R2}, v.options());
  float* po = out.data_ptr<float>();

  // sweep 1: z then y inside each x-slice; the slice scratch has r1 zero rows above and below
  at::parallel_for(0, R0, 1, [&](int64_t b, int64_t e) {
    std::vector<float> line(R2 + 2 * r2, 0.f), slice((R1 + 2 * r1) * R2, 0.f);
    float* rows = slice.data() + r1 * R2;
    for (int64_t x = b; x < e; ++x) {
      const float* s = src + x * P;
      for (int64_t y = 0; y < R1; ++y) {
        std::memcpy(line.data() + r2, s + y * R2, sizeof(float) * R2);
        conv(line.data() + r2, 1, R2, rows + y * R2, pw2, r2);
      }
      conv(rows, R2, P, po + x * P, pw1, r1);
    }
  });

  // sweep 2, in place: gather a block of kBlock columns for every x (r0 zero rows at both ends),
  // blur along x and write the block back
  const int64_t nblk = (P + kBlock - 1) / kBlock;
  at::parallel_for(0, nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<float> col((R0 + 2 * r0) * kBlock, 0.f);
    float* rows = col.data() + r0 * kBlock;
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t c0 = blk * kBlock, C = std::min(kBlock, P - c0);
      for (int64_t x = 0; x < R0; ++x) std::memcpy(rows + x * kBlock, po + x * P + c0, sizeof(float) * C);
      for (int64_t x = 0; x < R0; ++x) conv(rows + x * kBlock, kBlock, C, po + x * P + c0, pw0, r0);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(nls_blur, m) { m.def("blur3d(Tensor v, Tensor w0, Tensor w1, Tensor w2) -> Tensor"); }

TORCH_LIBRARY_IMPL(nls_blur, CPU, m) { m.impl("blur3d", &blur3d); }
