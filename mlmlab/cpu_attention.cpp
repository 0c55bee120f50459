// Fused multi-head self-attention for small heads on x86 CPUs with AVX512-BF16, forward and backward
// (mlmlab/cpu_attention.py loads it). One (batch, head) pair at a time per thread, so its Q, K, V and
// T x T scores stay in the core's cache: no head split or merge copies, no softmax passes over memory.
// Every matrix product is a bf16 dot-product instruction (vdpbf16ps: 16 fp32 lanes, each adding a
// pair of bf16 products), which wants its operands interleaved in pairs along the summed dimension:
// the pair_* helpers build those layouts per head. Softmax runs in fp32.
// Layouts: qkv (B, T, 3, H, D) as the fused projection writes it; out, dout (B, T, H, D); probs
// (B, H, T, T) bf16, kept from the forward pass for the backward pass. Needs D % 16 == 0, T % 32 == 0.
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")

typedef uint16_t bf16;

static inline __m512 bf16x16_to_f32(const bf16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline void f32_to_bf16x16(bf16* p, __m512 v) {
  _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
}
static inline __m512 dp(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
static inline __m512i bcast32(const bf16* p) {  // a pair of bf16 values, in every lane
  int32_t v; std::memcpy(&v, p, 4); return _mm512_set1_epi32(v);
}

// exp(x) for x <= 0 (softmax after subtracting the row max), relative error ~2e-7. A NaN stays NaN
// (max_ps returns its second operand when one is NaN), so a diverging run still shows a NaN loss.
static inline __m512 exp_nonpos(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Pairs of rows interleaved: dst[(u * D + d) * 2 + e] = src[(2u + e) * stride + d]  (pairs over rows, "VNNI")
static inline void pair_rows(const bf16* src, int64_t stride, int64_t T, int64_t D, bf16* dst) {
  static const __m512i idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                              39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  for (int64_t u = 0; u < T / 2; ++u)
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
      __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(src + 2 * u * stride + d0)));
      __m512i b = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(src + (2 * u + 1) * stride + d0)));
      _mm512_storeu_si512(dst + (u * D + d0) * 2, _mm512_permutex2var_epi16(a, idx, b));
    }
}
// Pairs of columns, transposed: dst32[t * T + j] = the pair (src[j][2t], src[j][2t + 1])
static inline void pair_cols_t(const bf16* src, int64_t stride, int64_t T, int64_t D, int32_t* dst) {
  for (int64_t j = 0; j < T; ++j) {
    const int32_t* row = (const int32_t*)(src + j * stride);
    for (int64_t t = 0; t < D / 2; ++t) dst[t * T + j] = row[t];
  }
}

// For two rows x0, x1 of D bf16: out0[j] = scale * sum_d x0[d] y_j[d], and out1 likewise, for j in
// [jb, jb + 16 NB); yp = pair_cols_t(y), (D/2 x T) int32. Two rows share every load of y; NB is a
// compile-time constant so that the 2 NB accumulators stay in registers.
template <int NB>
static inline void row_dots_block(const bf16* x0, const bf16* x1, const int32_t* yp, int64_t T, int64_t D, float scale,
                                  float* out0, float* out1, int64_t jb) {
  __m512 acc0[NB], acc1[NB];
  for (int n = 0; n < NB; ++n) acc0[n] = acc1[n] = _mm512_setzero_ps();
  for (int64_t t = 0; t < D / 2; ++t) {
    const __m512i b0 = bcast32(x0 + 2 * t), b1 = bcast32(x1 + 2 * t);
    const int32_t* r = yp + t * T + jb;
    for (int n = 0; n < NB; ++n) {
      const __m512i y = _mm512_loadu_si512(r + 16 * n);
      acc0[n] = dp(acc0[n], y, b0);
      acc1[n] = dp(acc1[n], y, b1);
    }
  }
  const __m512 vs = _mm512_set1_ps(scale);
  for (int n = 0; n < NB; ++n) {
    _mm512_storeu_ps(out0 + jb + 16 * n, _mm512_mul_ps(acc0[n], vs));
    _mm512_storeu_ps(out1 + jb + 16 * n, _mm512_mul_ps(acc1[n], vs));
  }
}
static inline void row_dots2(const bf16* x0, const bf16* x1, const int32_t* yp, int64_t T, int64_t D, float scale,
                             float* out0, float* out1) {
  int64_t jb = 0;
  for (; jb + 128 <= T; jb += 128) row_dots_block<8>(x0, x1, yp, T, D, scale, out0, out1, jb);
  for (; jb + 32 <= T; jb += 32) row_dots_block<2>(x0, x1, yp, T, D, scale, out0, out1, jb);
}
// For two weight rows w0, w1 of T bf16 (their pairs strided by ws) and rows y (D = 16 ND dims)
// paired by pair_rows: r0[n] = sum_u (w0[2u], w0[2u+1]) . (y[2u], y[2u+1]) over dims [16n, 16n + 16),
// and r1 likewise. One pass over u for all ND blocks, so each weight is broadcast once; NU chains
// per block keep eight accumulators in flight.
template <int ND>
static inline void weighted_rows2(const bf16* w0, const bf16* w1, int64_t ws, const bf16* yp, int64_t T,
                                  __m512* r0, __m512* r1) {
  constexpr int NU = ND >= 4 ? 1 : 4 / ND;
  constexpr int64_t D = 16 * ND;
  __m512 a[NU][ND], c[NU][ND];
  for (int k = 0; k < NU; ++k)
    for (int n = 0; n < ND; ++n) a[k][n] = c[k][n] = _mm512_setzero_ps();
  for (int64_t u = 0; u < T / 2; u += NU)
    for (int k = 0; k < NU; ++k) {
      const __m512i b0 = bcast32(w0 + (u + k) * ws), b1 = bcast32(w1 + (u + k) * ws);
      const bf16* y = yp + (u + k) * D * 2;
      for (int n = 0; n < ND; ++n) {
        const __m512i v = _mm512_loadu_si512(y + 32 * n);
        a[k][n] = dp(a[k][n], v, b0);
        c[k][n] = dp(c[k][n], v, b1);
      }
    }
  for (int n = 0; n < ND; ++n) {
    r0[n] = a[0][n];
    r1[n] = c[0][n];
    for (int k = 1; k < NU; ++k) {
      r0[n] = _mm512_add_ps(r0[n], a[k][n]);
      r1[n] = _mm512_add_ps(r1[n], c[k][n]);
    }
  }
}
// Row pairs of a T x T bf16 matrix, for column access: dst[(u * T + j) * 2 + e] = m[(2u + e) * T + j]
static inline void pair_matrix_rows(const bf16* m, int64_t T, bf16* dst) { pair_rows(m, T, T, T, dst); }

// Softmax of a row of T fp32 scores in place, then its bf16 copy to prow.
static inline void softmax_row(float* s, int64_t T, bf16* prow) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < T; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < T; j += 16) {
    const __m512 p = exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    _mm512_storeu_ps(s + j, p);
    vsum = _mm512_add_ps(vsum, p);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (int64_t j = 0; j < T; j += 16) f32_to_bf16x16(prow + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
}

// out (B, T, H, D) and the attention probabilities probs (B, H, T, T), kept for the backward pass.
template <int ND>
static void forward(const bf16* qkv, bf16* out, bf16* probs, int64_t B, int64_t T, int64_t H) {
  constexpr int64_t D = 16 * ND;
  const int64_t C = H * D, row = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  #pragma omp parallel
  {
    std::vector<int32_t> kp(D / 2 * T);
    std::vector<bf16> vp(T * D);
    std::vector<float> s0(T), s1(T);
    #pragma omp for
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const bf16* base = qkv + b * T * row + h * D;
      pair_cols_t(base + C, row, T, D, kp.data());   // K, for S = Q K^T
      pair_rows(base + 2 * C, row, T, D, vp.data());  // V, for O = P V
      for (int64_t i = 0; i < T; i += 2) {            // two query rows at a time
        row_dots2(base + i * row, base + (i + 1) * row, kp.data(), T, D, scale, s0.data(), s1.data());
        bf16* p0 = probs + (bh * T + i) * T;
        softmax_row(s0.data(), T, p0);
        softmax_row(s1.data(), T, p0 + T);
        bf16* o = out + (b * T + i) * C + h * D;
        __m512 r0[ND], r1[ND];
        weighted_rows2<ND>(p0, p0 + T, 2, vp.data(), T, r0, r1);
        for (int n = 0; n < ND; ++n) {
          f32_to_bf16x16(o + 16 * n, r0[n]);
          f32_to_bf16x16(o + C + 16 * n, r1[n]);
        }
      }
    }
  }
}

// dS_i = P_i * (dP_i - delta_i) for one row, with delta_i = dO_i . O_i; dS as bf16.
static inline void ds_row(const bf16* dout_i, const bf16* out_i, int64_t D, const float* dp_i, const bf16* p_i, int64_t T, bf16* ds_i) {
  __m512 vdelta = _mm512_setzero_ps();
  for (int64_t d0 = 0; d0 < D; d0 += 16)
    vdelta = _mm512_fmadd_ps(bf16x16_to_f32(dout_i + d0), bf16x16_to_f32(out_i + d0), vdelta);
  const __m512 delta = _mm512_set1_ps(_mm512_reduce_add_ps(vdelta));
  for (int64_t j = 0; j < T; j += 16)
    f32_to_bf16x16(ds_i + j, _mm512_mul_ps(bf16x16_to_f32(p_i + j), _mm512_sub_ps(_mm512_loadu_ps(dp_i + j), delta)));
}

template <int ND>
static void backward(const bf16* dout, const bf16* qkv, const bf16* out, const bf16* probs, bf16* dqkv,
                     int64_t B, int64_t T, int64_t H) {
  constexpr int64_t D = 16 * ND;
  const int64_t C = H * D, row = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const __m512 vscale = _mm512_set1_ps(scale);
  #pragma omp parallel
  {
    std::vector<int32_t> vd(D / 2 * T);
    std::vector<bf16> kj(T * D), qi(T * D), doi(T * D), ds(T * T), dsp(T * T), pp(T * T);
    std::vector<float> dp0(T), dp1(T);
    #pragma omp for
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const bf16* base = qkv + b * T * row + h * D;
      const bf16* dob = dout + b * T * C + h * D;
      const bf16* ob = out + b * T * C + h * D;
      const bf16* P = probs + bh * T * T;
      bf16* gbase = dqkv + b * T * row + h * D;
      pair_cols_t(base + 2 * C, row, T, D, vd.data());   // V, for dP = dO V^T
      pair_rows(base + C, row, T, D, kj.data());         // K, for dQ = dS K
      pair_rows(base, row, T, D, qi.data());             // Q, for dK = dS^T Q
      pair_rows(dob, C, T, D, doi.data());               // dO, for dV = P^T dO
      for (int64_t i = 0; i < T; i += 2) {
        row_dots2(dob + i * C, dob + (i + 1) * C, vd.data(), T, D, 1.0f, dp0.data(), dp1.data());
        ds_row(dob + i * C, ob + i * C, D, dp0.data(), P + i * T, T, ds.data() + i * T);
        ds_row(dob + (i + 1) * C, ob + (i + 1) * C, D, dp1.data(), P + (i + 1) * T, T, ds.data() + (i + 1) * T);
        __m512 r0[ND], r1[ND];   // dQ_i = scale * sum_j dS_ij K_j
        weighted_rows2<ND>(ds.data() + i * T, ds.data() + (i + 1) * T, 2, kj.data(), T, r0, r1);
        for (int n = 0; n < ND; ++n) {
          f32_to_bf16x16(gbase + i * row + 16 * n, _mm512_mul_ps(r0[n], vscale));
          f32_to_bf16x16(gbase + (i + 1) * row + 16 * n, _mm512_mul_ps(r1[n], vscale));
        }
      }
      pair_matrix_rows(ds.data(), T, dsp.data());
      pair_matrix_rows(P, T, pp.data());
      for (int64_t j = 0; j < T; j += 2) {   // dK_j = scale * sum_i dS_ij Q_i ; dV_j = sum_i P_ij dO_i
        __m512 r0[ND], r1[ND];
        weighted_rows2<ND>(dsp.data() + 2 * j, dsp.data() + 2 * (j + 1), 2 * T, qi.data(), T, r0, r1);
        for (int n = 0; n < ND; ++n) {
          f32_to_bf16x16(gbase + j * row + C + 16 * n, _mm512_mul_ps(r0[n], vscale));
          f32_to_bf16x16(gbase + (j + 1) * row + C + 16 * n, _mm512_mul_ps(r1[n], vscale));
        }
        weighted_rows2<ND>(pp.data() + 2 * j, pp.data() + 2 * (j + 1), 2 * T, doi.data(), T, r0, r1);
        for (int n = 0; n < ND; ++n) {
          f32_to_bf16x16(gbase + j * row + 2 * C + 16 * n, r0[n]);
          f32_to_bf16x16(gbase + (j + 1) * row + 2 * C + 16 * n, r1[n]);
        }
      }
    }
  }
}
// Entry points: head_dim D in {16, 32, 64} (the caller checks; other sizes do nothing).
extern "C" void attn_forward(const bf16* qkv, bf16* out, bf16* probs, int64_t B, int64_t T, int64_t H, int64_t D) {
  switch (D) {
    case 16: forward<1>(qkv, out, probs, B, T, H); break;
    case 32: forward<2>(qkv, out, probs, B, T, H); break;
    case 64: forward<4>(qkv, out, probs, B, T, H); break;
  }
}
extern "C" void attn_backward(const bf16* dout, const bf16* qkv, const bf16* out, const bf16* probs, bf16* dqkv,
                              int64_t B, int64_t T, int64_t H, int64_t D) {
  switch (D) {
    case 16: backward<1>(dout, qkv, out, probs, dqkv, B, T, H); break;
    case 32: backward<2>(dout, qkv, out, probs, dqkv, B, T, H); break;
    case 64: backward<4>(dout, qkv, out, probs, dqkv, B, T, H); break;
  }
}
#pragma GCC pop_options
