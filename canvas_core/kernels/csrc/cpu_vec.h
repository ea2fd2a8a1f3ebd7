// Lane vectors and their arithmetic for canvas's compiled CPU kernels (rwkv's WKV read, the
// mamba plugin's scan).  A kernel's work item holds 16 channels in one vector: GCC / Clang vector
// extensions, so that the compiler picks the widest registers the machine has (the kernels are
// built with -march=native), with AVX-512 forms where they are shorter and give the same values.
//
// canvas_core.kernels.cpu_build passes this folder as an include path and hashes this header
// into every build's name: a changed header rebuilds the kernels that include it.  Everything is
// inside an unnamed namespace, so each kernel library keeps its own copy (two libraries built from
// different versions of this header never share a symbol).
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace canvas_cpu {
namespace {

// at::parallel_for runs on the OpenMP runtime the kernel library was linked with (torch's own
// when they are one library, as with torch's Linux wheels).  Each operator first gives it torch's
// thread count, so that torch.set_num_threads governs the kernels as it governs torch.
inline void use_torch_threads() {
#ifdef _OPENMP
  omp_set_num_threads(at::get_num_threads());
#endif
}

constexpr int V = 16;  // lanes (channels) per vector

typedef float vf32 __attribute__((vector_size(V * sizeof(float))));
typedef double vf64 __attribute__((vector_size(V * sizeof(double))));
typedef int32_t vi32 __attribute__((vector_size(V * sizeof(int32_t))));
template <typename S> struct Lanes;
template <> struct Lanes<float> { using type = vf32; };
template <> struct Lanes<double> { using type = vf64; };
// 16 lanes of S (float or double)
template <typename S>
using vec = typename Lanes<S>::type;

// x in every lane
template <typename S>
inline vec<S> splat(S x) {
  return vec<S>{} + x;
}

// 2^f for |f| <= 1/2 on 16 float lanes: a degree-6 polynomial (a least-squares fit of 2^f's
// relative error on [-1/2, 1/2]: 2e-9 in exact arithmetic, about 1e-7 = 1.6 float32 ulp after
// rounding).
inline vec<float> exp2_frac(vec<float> f) {
  vec<float> p = f * 1.5337576834423183e-04f + 1.339986036322529e-03f;
  p = p * f + 9.61851953434672e-03f;
  p = p * f + 5.550328997517387e-02f;
  p = p * f + 2.4022646608714063e-01f;
  p = p * f + 6.931472056005101e-01f;
  return p * f + 1.0000000005920207f;
}

// exp2_in_range(y) = 2^y for y in [-126, 126]: y = k + f with k the nearest integer, 2^f by
// exp2_frac, times 2^k (exact: a normal result is only rescaled).  exp2_neg(x) = 2^x for x <= 0,
// 0 for x <= -126 (decays).
#ifdef __AVX512F__
// AVX-512: k by one rounding instruction and p 2^k by one vscalefps: the same values as the
// portable form below (the same k, p 2^k rounded once either way) in four fewer instructions.
inline __m512 nearest(vec<float> y) { return _mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline vec<float> exp2_in_range(vec<float> y) {
  const __m512 k = nearest(y);
  return (vec<float>)_mm512_scalef_ps((__m512)exp2_frac(y - (vec<float>)k), k);
}

inline vec<float> exp2_neg(vec<float> x) {
  const __mmask16 live = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-126.f), _CMP_NLE_UQ);
  const __m512 k = nearest(x);
  return (vec<float>)_mm512_maskz_scalef_ps(live, (__m512)exp2_frac(x - (vec<float>)k), k);
}
#else
// k by adding and subtracting 1.5 * 2^23 (the build must not use -ffast-math, which folds that
// away), 2^k written into the exponent bits
inline vec<float> exp2_in_range(vec<float> y) {
  const float magic = 12582912.f;
  const vec<float> k = (y + magic) - magic;
  const vi32 bits = (__builtin_convertvector(k, vi32) + 127) << 23;
  vec<float> s;
  std::memcpy(&s, &bits, sizeof(s));
  return exp2_frac(y - k) * s;
}

inline vec<float> exp2_neg(vec<float> x) {
  const vec<float> floor_ = vec<float>{} - 126.f;
  const vec<float> zero = {};
  return x <= floor_ ? zero : exp2_in_range(x);
}
#endif

// float64: lane by lane with the C library (the exact path tests and probes use)
inline vec<double> exp2_neg(vec<double> x) {
  vec<double> r;
  for (int i = 0; i < V; ++i) r[i] = std::exp2(x[i]);
  return r;
}

// The first ne (<= V) lanes from p, the rest 0
template <typename S>
inline vec<S> load(const S* p, int64_t ne) {
  vec<S> v = {};
  if (ne == V) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    for (int64_t i = 0; i < ne; ++i) v[i] = p[i];
  }
  return v;
}

// The first ne (<= V) lanes of v to p
template <typename S>
inline void store(S* p, const vec<S>& v, int64_t ne) {
  if (ne == V) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int64_t i = 0; i < ne; ++i) p[i] = v[i];
  }
}

#ifdef __AVX512F__
// float32: one masked load or store straight to or from a register (GCC compiles the generic form
// above to a copy through the stack)
inline __mmask16 lanes_mask(int64_t ne) { return ne >= V ? __mmask16(0xFFFF) : __mmask16((1u << ne) - 1); }

template <>
inline vec<float> load<float>(const float* p, int64_t ne) {
  return (vec<float>)_mm512_maskz_loadu_ps(lanes_mask(ne), p);
}

template <>
inline void store<float>(float* p, const vec<float>& v, int64_t ne) {
  _mm512_mask_storeu_ps(p, lanes_mask(ne), (__m512)v);
}
#endif

// The sum of the 16 lanes
template <typename S>
inline S hsum(const vec<S>& v) {
  S s = 0;
  for (int i = 0; i < V; ++i) s += v[i];
  return s;
}

// float32 by halving (a lane-by-lane loop compiles to 16 dependent scalar adds)
template <>
inline float hsum<float>(const vec<float>& v) {
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  v8 lo, hi;
  std::memcpy(&lo, &v, 32);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
  const v8 s8 = lo + hi;
  v4 a, b;
  std::memcpy(&a, &s8, 16);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + 16, 16);
  const v4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// out[i] = hsum(v[i]) for i < n
template <typename S>
inline void hsum_rows(const vec<S>* v, int64_t n, S* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = hsum<S>(v[i]);
}

#ifdef __AVX512F__
// Sixteen float sums at once, each added in hsum<float>'s order (so the same values): pairs of
// vectors are halved together, 128-bit quarters then lanes (46 instructions, against about 150
// for sixteen hsum).  The input order is permuted so that the sums come out in order: the last
// step leaves row 4j + k's sum in lane 4k + j.
inline __m512 hsum16(const vec<float>* v) {
  __m512 w[8], x[4], r[2];
  auto row = [&](int s) { return (__m512)v[4 * (s % 4) + s / 4]; };
  for (int m = 0; m < 8; ++m) {  // [s8 of row 2m | s8 of row 2m + 1], s8[i] = v[i] + v[i + 8]
    const __m512 a = row(2 * m), b = row(2 * m + 1);
    w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int m = 0; m < 4; ++m)  // quarter k: s4 of row 4m + k, s4[i] = s8[i] + s8[i + 4]
    x[m] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * m], w[2 * m + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * m], w[2 * m + 1], 0xDD));
  for (int m = 0; m < 2; ++m)  // quarter k: s4[0] + s4[2], s4[1] + s4[3] of rows 8m + k, 8m + 4 + k
    r[m] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * m], x[2 * m + 1], 0x44),
                         _mm512_shuffle_ps(x[2 * m], x[2 * m + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(r[0], r[1], 0x88), _mm512_shuffle_ps(r[0], r[1], 0xDD));
}

template <>
inline void hsum_rows<float>(const vec<float>* v, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + V <= n; i += V) _mm512_storeu_ps(out + i, hsum16(v + i));
  for (; i < n; ++i) out[i] = hsum<float>(v[i]);
}
#endif

}  // namespace
}  // namespace canvas_cpu
