// CPU kernel for the multiresolution hash encoding (Mueller et al. 2022, "Instant Neural
// Graphics Primitives with a Multiresolution Hash Encoding").
//
// Same semantics as the pure-PyTorch path in plugins/ngp/hashgrid.py (which is the
// reference; tests check equality):
//   * x is clamped to [0, 1] (NaN -> 0); level l has integer resolution N_l (Eq. 2/3 of the paper);
//     the cell is floor(x * N_l), clamped to N_l - 1 so that x == 1 stays in the grid;
//   * levels with (N_l + 1)^3 <= T are indexed densely: i + j (N_l+1) + k (N_l+1)^2;
//   * other levels are hashed (Eq. 4): (i * 1 XOR j * 2654435761 XOR k * 805459861) mod T,
//     in uint32 arithmetic, T a power of two;
//   * the 8 corners are blended trilinearly.
// First-order gradients only: w.r.t. the table (`backward`) and w.r.t. x (`backward_input`, the
// derivative of the trilinear weights, zero where x was clamped). The Python side differentiates
// the pure-PyTorch path instead when a gradient must itself be differentiable (create_graph).
//
// Threading: at::parallel_for (torch's OpenMP pool, honours torch.set_num_threads).
// Forward splits points between threads and runs level-major inside each thread's range (one
// level's table stays in the last-level cache while it is used); backward splits *levels*
// between threads (levels interleaved), so the scatter-add needs no atomics and is deterministic.

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;

struct Level {
  float res_f;      // N_l as float
  int32_t res_max;  // N_l - 1 (largest cell index)
  int64_t offset;   // first row of this level in the flat table
  uint32_t s1, s2;  // dense strides (N_l+1), (N_l+1)^2
  bool dense;
};

std::vector<Level> make_levels(const at::Tensor& levels) {
  // levels: (L, 3) int64 = [resolution, row offset, dense flag]
  TORCH_CHECK(levels.dim() == 2 && levels.size(1) == 3 && levels.scalar_type() == at::kLong,
              "levels must be (L, 3) int64");
  auto lc = levels.contiguous();
  const int64_t* p = lc.data_ptr<int64_t>();
  std::vector<Level> out(lc.size(0));
  for (int64_t l = 0; l < lc.size(0); ++l) {
    int64_t r = p[3 * l];
    out[l].res_f = static_cast<float>(r);
    out[l].res_max = static_cast<int32_t>(r - 1);
    out[l].offset = p[3 * l + 1];
    out[l].s1 = static_cast<uint32_t>(r + 1);
    out[l].s2 = static_cast<uint32_t>((r + 1) * (r + 1));
    out[l].dense = p[3 * l + 2] != 0;
  }
  return out;
}

#ifndef NLS_HG_BLOCK
#define NLS_HG_BLOCK 16
#endif
#ifndef NLS_HG_PF_LOCALITY
#define NLS_HG_PF_LOCALITY 3
#endif
// Gathers / scatters are software-pipelined: the table rows of the 8 corners of a block of
// kBlock points are computed (vectorised, structure-of-arrays) and prefetched one step ahead of
// the loop that reads / updates them, so that many independent cache misses are in flight (the
// hashed levels of a default grid, 11 x 4 MB, do not fit in cache; random points make almost
// every access a miss).
constexpr int kBlock = NLS_HG_BLOCK;
#ifndef NLS_HG_TRANSPOSE
#define NLS_HG_TRANSPOSE 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NLS_HG_PREFETCH(addr, rw) __builtin_prefetch((addr), (rw), NLS_HG_PF_LOCALITY)
#else
#define NLS_HG_PREFETCH(addr, rw) ((void)0)
#endif

struct BlockBuf {
  uint32_t rows[8 * kBlock];  // [corner][point], absolute table row
  float w[8 * kBlock];        // [corner][point]
  float frac[3 * kBlock];     // [axis][point], position inside the cell (for the input gradient)
};

// Index / weight computation for one block at one level. Compiled twice (AVX2 and baseline) and
// picked at load time (GCC target_clones); no FMA, so results are bitwise those of the scalar code.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NLS_HG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NLS_HG_CLONES
#endif

NLS_HG_CLONES
void fill_rows(const float* x, int64_t cnt, const Level& lv, uint32_t mask, BlockBuf& buf) {
  float f[3][kBlock];
  uint32_t ic[3][kBlock];
  const float res = lv.res_f;
  const int32_t res_max = lv.res_max;
  for (int a = 0; a < 3; ++a) {
    for (int i = 0; i < kBlock; ++i) {
      float v = (i < cnt) ? x[3 * i + a] : 0.0f;
      v = (v >= 0.0f) ? std::min(v, 1.0f) : 0.0f;  // clamp to [0, 1]; NaN -> 0 (never index out of range)
      float pos = v * res;
      float fl = std::floor(pos);
      int32_t c = static_cast<int32_t>(fl);
      c = std::min(c, res_max);
      fl = static_cast<float>(c);
      ic[a][i] = static_cast<uint32_t>(c);
      f[a][i] = pos - fl;
      buf.frac[a * kBlock + i] = f[a][i];
    }
  }
  const uint32_t off = static_cast<uint32_t>(lv.offset);
  for (int c = 0; c < 8; ++c) {
    const uint32_t bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
    uint32_t* r = buf.rows + c * kBlock;
    float* w = buf.w + c * kBlock;
    if (lv.dense) {
      const uint32_t s1 = lv.s1, s2 = lv.s2;
      for (int i = 0; i < kBlock; ++i)
        r[i] = off + (ic[0][i] + bx) + (ic[1][i] + by) * s1 + (ic[2][i] + bz) * s2;
    } else {
      for (int i = 0; i < kBlock; ++i)
        r[i] = off + (((ic[0][i] + bx) ^ ((ic[1][i] + by) * kPrime1) ^ ((ic[2][i] + bz) * kPrime2)) & mask);
    }
    for (int i = 0; i < kBlock; ++i) {
      const float wx = bx ? f[0][i] : 1.0f - f[0][i];
      const float wy = by ? f[1][i] : 1.0f - f[1][i];
      const float wz = bz ? f[2][i] : 1.0f - f[2][i];
      w[i] = (wx * wy) * wz;
    }
  }
}

template <bool kWrite>
inline void fill_block(BlockBuf& buf, const float* x, int64_t i0, int64_t i1, const Level& lv,
                       uint32_t mask, const float* base, int64_t nf) {
  const int64_t cnt = i1 - i0;
  fill_rows(x + 3 * i0, cnt, lv, mask, buf);
  for (int c = 0; c < 8; ++c)
    for (int64_t i = 0; i < cnt; ++i)
      NLS_HG_PREFETCH(base + static_cast<int64_t>(buf.rows[c * kBlock + i]) * nf, kWrite ? 1 : 0);
}

template <int F>
inline void gather_block(const BlockBuf& buf, int64_t i0, int64_t i1, int64_t l, int64_t L,
                         const float* table, float* out, int64_t nf) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t j = i - i0;
    float* op = out + i * L * nf + l * nf;
    if constexpr (F > 0) {
      float acc[F];
      for (int f = 0; f < F; ++f) acc[f] = 0.0f;
      for (int c = 0; c < 8; ++c) {
        const float* t = table + static_cast<int64_t>(buf.rows[c * kBlock + j]) * F;
        const float wc = buf.w[c * kBlock + j];
        for (int f = 0; f < F; ++f) acc[f] += wc * t[f];
      }
      for (int f = 0; f < F; ++f) op[f] = acc[f];
    } else {
      for (int64_t f = 0; f < nf; ++f) {
        float acc = 0.0f;
        for (int c = 0; c < 8; ++c)
          acc += buf.w[c * kBlock + j] * table[static_cast<int64_t>(buf.rows[c * kBlock + j]) * nf + f];
        op[f] = acc;
      }
    }
  }
}

template <int F>
inline void scatter_block(const BlockBuf& buf, int64_t i0, int64_t i1, int64_t l, int64_t L,
                          const float* gout, float* gtab, int64_t nf, int64_t n_pts) {
  (void)L;
  (void)n_pts;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t j = i - i0;
#if NLS_HG_TRANSPOSE
    const float* g = gout + (l * n_pts + i) * nf;  // level-major copy (L, N, F)
#else
    const float* g = gout + i * L * nf + l * nf;
#endif
    for (int c = 0; c < 8; ++c) {
      float* t = gtab + static_cast<int64_t>(buf.rows[c * kBlock + j]) * nf;
      const float wc = buf.w[c * kBlock + j];
      if constexpr (F > 0) {
        for (int f = 0; f < F; ++f) t[f] += wc * g[f];
      } else {
        for (int64_t f = 0; f < nf; ++f) t[f] += wc * g[f];
      }
    }
  }
}

// d out / d x for a block at one level, contracted with the output gradient:
//   gx[i, a] += N_l * sum_c (d w_c / d frac_a) * sum_f g[i, l, f] T[row_c, f],
// with d w_c / d frac_x = (+1 if the corner's x bit is set, else -1) * w_y * w_z (and so on).
template <int F>
inline void input_grad_block(const BlockBuf& buf, int64_t i0, int64_t i1, int64_t l, int64_t L,
                             const float* table, const float* gout, float* gx, int64_t nf, float res) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t j = i - i0;
    const float* g = gout + i * L * nf + l * nf;
    const float fx = buf.frac[j], fy = buf.frac[kBlock + j], fz = buf.frac[2 * kBlock + j];
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f;
    for (int c = 0; c < 8; ++c) {
      const float* t = table + static_cast<int64_t>(buf.rows[c * kBlock + j]) * nf;
      float dot = 0.0f;
      if constexpr (F > 0) {
        for (int f = 0; f < F; ++f) dot += g[f] * t[f];
      } else {
        for (int64_t f = 0; f < nf; ++f) dot += g[f] * t[f];
      }
      const bool bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
      const float wx = bx ? fx : 1.0f - fx, wy = by ? fy : 1.0f - fy, wz = bz ? fz : 1.0f - fz;
      d0 += (bx ? dot : -dot) * (wy * wz);
      d1 += (by ? dot : -dot) * (wx * wz);
      d2 += (bz ? dot : -dot) * (wx * wy);
    }
    float* o = gx + 3 * i;
    o[0] += res * d0;
    o[1] += res * d1;
    o[2] += res * d2;
  }
}

// The pipelined, level-major walk over the blocks [bb, be) of one thread's range of points: for each
// level, the rows and weights of block k + 1 are computed and prefetched while `body(buf, i0, i1, l)`
// reads those of block k. Level-major: while one level is processed only its table (<= T rows) is
// touched, so it stays in the last-level cache and is reused by many points.
template <typename Body>
inline void walk_levels(int64_t bb, int64_t be, int64_t n, const float* x, const std::vector<Level>& lv,
                        uint32_t mask, const float* table, int64_t nf, Body&& body) {
  BlockBuf buf[2];
  const int64_t L = static_cast<int64_t>(lv.size());
  for (int64_t l = 0; l < L; ++l) {
    auto fill = [&](int64_t k) {
      const int64_t i0 = k * kBlock, i1 = std::min(n, i0 + kBlock);
      fill_block<false>(buf[k & 1], x, i0, i1, lv[l], mask, table, nf);
    };
    fill(bb);
    for (int64_t k = bb; k < be; ++k) {
      if (k + 1 < be) fill(k + 1);
      const int64_t i0 = k * kBlock, i1 = std::min(n, i0 + kBlock);
      body(buf[k & 1], i0, i1, l);
    }
  }
}

template <int F>
void forward_impl(const float* x, const float* table, float* out, int64_t n,
                  const std::vector<Level>& lv, uint32_t mask, int64_t fdim) {
  const int64_t L = static_cast<int64_t>(lv.size());
  const int64_t nf = (F > 0) ? F : fdim;
  const int64_t nblk = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, nblk, 64, [&](int64_t bb, int64_t be) {
    walk_levels(bb, be, n, x, lv, mask, table, nf, [&](const BlockBuf& buf, int64_t i0, int64_t i1, int64_t l) {
      gather_block<F>(buf, i0, i1, l, L, table, out, nf);
    });
  });
}

template <int F>
void backward_impl(const float* x, const float* gout, float* gtab, int64_t n, int64_t n_rows,
                   const std::vector<Level>& lv, uint32_t mask, int64_t fdim) {
  const int64_t L = static_cast<int64_t>(lv.size());
  const int64_t nf = (F > 0) ? F : fdim;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), L));
  const int64_t nblk = (n + kBlock - 1) / kBlock;
  // Each task owns levels t, t + nt, t + 2 nt, ...: disjoint table rows, no atomics, and a fixed
  // summation order (deterministic result).
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    BlockBuf buf[2];
    for (int64_t t = b; t < e; ++t) {
      for (int64_t l = t; l < L; l += nt) {
        // Zero this level's rows here (gtab comes uninitialised): first touch by the thread that
        // scatters into them, and the rows are cache-warm when the scatter starts.
        const int64_t row_end = (l + 1 < L) ? lv[l + 1].offset : n_rows;
        std::fill(gtab + lv[l].offset * nf, gtab + row_end * nf, 0.0f);
        auto fill = [&](int64_t k) {
          const int64_t i0 = k * kBlock, i1 = std::min(n, i0 + kBlock);
          fill_block<true>(buf[k & 1], x, i0, i1, lv[l], mask, gtab, nf);
        };
        if (nblk > 0) fill(0);
        for (int64_t k = 0; k < nblk; ++k) {
          if (k + 1 < nblk) fill(k + 1);
          const int64_t i0 = k * kBlock, i1 = std::min(n, i0 + kBlock);
          scatter_block<F>(buf[k & 1], i0, i1, l, L, gout, gtab, nf, n);
        }
      }
    }
  });
}

template <int F>
void input_backward_impl(const float* x, const float* gout, const float* table, float* gx, int64_t n,
                         const std::vector<Level>& lv, uint32_t mask, int64_t fdim) {
  const int64_t L = static_cast<int64_t>(lv.size());
  const int64_t nf = (F > 0) ? F : fdim;
  const int64_t nblk = (n + kBlock - 1) / kBlock;
  // Split by points, as the forward: each thread owns its points' rows of gx (no atomics) and
  // sums the levels in a fixed order (deterministic whatever the thread count).
  at::parallel_for(0, nblk, 64, [&](int64_t bb, int64_t be) {
    const int64_t p0 = bb * kBlock, p1 = std::min(n, be * kBlock);
    std::fill(gx + 3 * p0, gx + 3 * p1, 0.0f);
    walk_levels(bb, be, n, x, lv, mask, table, nf, [&](const BlockBuf& buf, int64_t i0, int64_t i1, int64_t l) {
      input_grad_block<F>(buf, i0, i1, l, L, table, gout, gx, nf, lv[l].res_f);
    });
    // x was clamped to [0, 1] (NaN to 0): no gradient where the clamp was active, as torch.clamp.
    for (int64_t i = p0; i < p1; ++i)
      for (int a = 0; a < 3; ++a) {
        const float v = x[3 * i + a];
        if (!(v >= 0.0f && v <= 1.0f)) gx[3 * i + a] = 0.0f;
      }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "hashgrid_cpu: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && table.scalar_type() == at::kFloat,
              "hashgrid_cpu: float32 only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "hashgrid_cpu: x must be (N, 3)");
  TORCH_CHECK(table.dim() == 2, "hashgrid_cpu: table must be (rows, F)");
}

at::Tensor hashgrid_forward(const at::Tensor& x_in, const at::Tensor& table_in,
                            const at::Tensor& levels, int64_t log2_hashmap_size) {
  check_inputs(x_in, table_in);
  auto x = x_in.contiguous();
  auto table = table_in.contiguous();
  auto lv = make_levels(levels);
  const int64_t n = x.size(0), F = table.size(1), L = static_cast<int64_t>(lv.size());
  const uint32_t mask = static_cast<uint32_t>((int64_t{1} << log2_hashmap_size) - 1);
  auto out = at::empty({n, L * F}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = out.data_ptr<float>();
  switch (F) {
    case 1: forward_impl<1>(xp, tp, op, n, lv, mask, F); break;
    case 2: forward_impl<2>(xp, tp, op, n, lv, mask, F); break;
    case 4: forward_impl<4>(xp, tp, op, n, lv, mask, F); break;
    case 8: forward_impl<8>(xp, tp, op, n, lv, mask, F); break;
    default: forward_impl<0>(xp, tp, op, n, lv, mask, F); break;
  }
  return out;
}

at::Tensor hashgrid_backward(const at::Tensor& x_in, const at::Tensor& grad_out_in,
                             const at::Tensor& levels, int64_t log2_hashmap_size,
                             int64_t n_rows, int64_t F) {
  check_inputs(x_in, grad_out_in);
  auto x = x_in.contiguous();
  auto gout = grad_out_in.contiguous();
  auto lv = make_levels(levels);
  const int64_t n = x.size(0), L = static_cast<int64_t>(lv.size());
  TORCH_CHECK(gout.size(0) == n && gout.size(1) == L * F, "hashgrid_cpu: grad_out shape");
  const uint32_t mask = static_cast<uint32_t>((int64_t{1} << log2_hashmap_size) - 1);
  TORCH_CHECK(L > 0 && lv[0].offset == 0 && lv[L - 1].offset < n_rows, "hashgrid_cpu: level offsets");
  auto gtab = at::empty({n_rows, F}, x.options());  // zeroed per level inside backward_impl
  const float* xp = x.data_ptr<float>();
#if NLS_HG_TRANSPOSE
  // One pass to a level-major copy (L, N, F): each level's pass then reads its gradient
  // contiguously instead of one cache line per point.
  auto gl = at::empty({L, n, F}, gout.options());
  {
    const float* src = gout.data_ptr<float>();
    float* dst = gl.data_ptr<float>();
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t f = 0; f < F; ++f) dst[(l * n + i) * F + f] = src[(i * L + l) * F + f];
    });
  }
  const float* gp = gl.data_ptr<float>();
#else
  const float* gp = gout.data_ptr<float>();
#endif
  float* tp = gtab.data_ptr<float>();
  switch (F) {
    case 1: backward_impl<1>(xp, gp, tp, n, n_rows, lv, mask, F); break;
    case 2: backward_impl<2>(xp, gp, tp, n, n_rows, lv, mask, F); break;
    case 4: backward_impl<4>(xp, gp, tp, n, n_rows, lv, mask, F); break;
    case 8: backward_impl<8>(xp, gp, tp, n, n_rows, lv, mask, F); break;
    default: backward_impl<0>(xp, gp, tp, n, n_rows, lv, mask, F); break;
  }
  return gtab;
}

at::Tensor hashgrid_backward_input(const at::Tensor& x_in, const at::Tensor& grad_out_in,
                                   const at::Tensor& table_in, const at::Tensor& levels,
                                   int64_t log2_hashmap_size) {
  check_inputs(x_in, table_in);
  auto x = x_in.contiguous();
  auto gout = grad_out_in.contiguous();
  auto table = table_in.contiguous();
  auto lv = make_levels(levels);
  const int64_t n = x.size(0), F = table.size(1), L = static_cast<int64_t>(lv.size());
  TORCH_CHECK(gout.scalar_type() == at::kFloat && gout.dim() == 2 && gout.size(0) == n && gout.size(1) == L * F,
              "hashgrid_cpu: grad_out shape");
  const uint32_t mask = static_cast<uint32_t>((int64_t{1} << log2_hashmap_size) - 1);
  auto gx = at::empty({n, 3}, x.options());  // zeroed per thread range inside input_backward_impl
  const float* xp = x.data_ptr<float>();
  const float* gp = gout.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = gx.data_ptr<float>();
  switch (F) {
    case 1: input_backward_impl<1>(xp, gp, tp, op, n, lv, mask, F); break;
    case 2: input_backward_impl<2>(xp, gp, tp, op, n, lv, mask, F); break;
    case 4: input_backward_impl<4>(xp, gp, tp, op, n, lv, mask, F); break;
    case 8: input_backward_impl<8>(xp, gp, tp, op, n, lv, mask, F); break;
    default: input_backward_impl<0>(xp, gp, tp, op, n, lv, mask, F); break;
  }
  return gx;
}

}  // namespace

#ifndef NLS_HG_LIBNAME
#define NLS_HG_LIBNAME nls_hashgrid
#endif

TORCH_LIBRARY(NLS_HG_LIBNAME, m) {
  m.def("forward(Tensor x, Tensor table, Tensor levels, int log2_hashmap_size) -> Tensor");
  m.def("backward(Tensor x, Tensor grad_out, Tensor levels, int log2_hashmap_size, int n_rows, int F) -> Tensor");
  m.def("backward_input(Tensor x, Tensor grad_out, Tensor table, Tensor levels, int log2_hashmap_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(NLS_HG_LIBNAME, CPU, m) {
  m.impl("forward", &hashgrid_forward);
  m.impl("backward", &hashgrid_backward);
  m.impl("backward_input", &hashgrid_backward_input);
}
