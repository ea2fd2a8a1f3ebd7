// RWKV-4's WKV read at given positions, forward and backward, for CPUs.
//
// One work item is a batch row and a block of 16 channels.  It steps through the keys in order
// carrying the log-space state (a, b) = sum_j e^(k_j - (t - j) w - p) (v_j, 1) of its 16 lanes
// and its scale's exponent p.  The scale decays with the state (p drops by w a step) and each key
// is added with weight e^(k_t - p) (one exp per step); only a key more than e^RESCALE above the
// decayed scale moves the scale to itself (step).  Reads are written where queries read; the
// state at the start of every chunk of T positions is saved for the backward.
//
// The backward walks the chunks in reverse: it recomputes a chunk's states from the saved start,
// then carries the adjoint of the state, lambda = e^s (la, lb), back through the chunk.  Its scale
// s is kept as the read that set it (position pr, exponent mr), s = -(pr - 1 - t) w - mr.  Work
// items are independent (each writes its own slice of dk, dv and of the dw, du partial sums its
// caller adds in a fixed order): the results do not depend on the thread count.
//
// Precision: whatever the inputs' dtype, the arithmetic is in double (the states, exponents,
// adjoints and the dw, du sums); for float32 inputs only the exps' polynomial is in float (exp_fast)
// or, where a factor is applied step after step, in double (exp_acc).  A float32 recurrence that
// rescales its sums every step rounds once per key into sums that barely decay when w is small:
// over 20k keys 100-1000x the PyTorch path's error.  In double, with the sums only added to
// between rare rescales, that error is gone (float32 results within a few 1e-7 of float64's).
// Built at first use by canvas_core.kernels.cpu_build.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_vec.h"  // lane vectors, exp2, loads / stores (shared with the mamba plugin's scan)

namespace {

using namespace canvas_cpu;  // V = 16 channels per work item

// The arithmetic's 16 lanes, in double for either input dtype: two native 8-lane halves.  (GCC
// keeps a 16-lane double vector type in memory, splats it one lane at a time and compares it
// lane by lane; a pair of register-sized halves it keeps in registers.)
typedef double vd8 __attribute__((vector_size(V / 2 * sizeof(double))));
typedef int64_t vm8 __attribute__((vector_size(V / 2 * sizeof(int64_t))));
typedef float vf8 __attribute__((vector_size(V / 2 * sizeof(float))));

struct vd {
  vd8 lo, hi;
};
struct vm {  // lane masks: all ones or 0
  vm8 lo, hi;
};

inline vd dsplat(double x) { return {vd8{} + x, vd8{} + x}; }
inline vd operator+(const vd& a, const vd& b) { return {a.lo + b.lo, a.hi + b.hi}; }
inline vd operator-(const vd& a, const vd& b) { return {a.lo - b.lo, a.hi - b.hi}; }
inline vd operator*(const vd& a, const vd& b) { return {a.lo * b.lo, a.hi * b.hi}; }
inline vd operator/(const vd& a, const vd& b) { return {a.lo / b.lo, a.hi / b.hi}; }
inline vd operator+(const vd& a, double b) { return {a.lo + b, a.hi + b}; }
inline vd operator-(const vd& a, double b) { return {a.lo - b, a.hi - b}; }
inline vd operator-(const vd& a) { return {-a.lo, -a.hi}; }
inline vd& operator+=(vd& a, const vd& b) { return a = a + b; }
inline vd& operator-=(vd& a, const vd& b) { return a = a - b; }
inline vm operator&(const vm& a, const vm& b) { return {a.lo & b.lo, a.hi & b.hi}; }
inline vm gt(const vd& a, const vd& b) { return {a.lo > b.lo, a.hi > b.hi}; }
inline vm ge(const vd& a, const vd& b) { return {a.lo >= b.lo, a.hi >= b.hi}; }
inline vm eq(const vd& a, const vd& b) { return {a.lo == b.lo, a.hi == b.hi}; }
// a where m, else b
inline vd sel(const vm& m, const vd& a, const vd& b) { return {m.lo ? a.lo : b.lo, m.hi ? a.hi : b.hi}; }
inline vd absv(const vd& x) {
  const vm8 mag = vm8{} + INT64_MAX;
  return {(vd8)((vm8)x.lo & mag), (vd8)((vm8)x.hi & mag)};
}

// 8 doubles to or from memory (by value: nothing of the caller's is made addressable)
inline void put8(double* p, vd8 x) { std::memcpy(p, &x, sizeof(x)); }
inline vd8 get8(const double* p) {
  vd8 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

// float lanes to double and back, in registers (a copy through memory would stall the chain)
#ifdef __AVX512F__
inline vd widen(const vec<float>& x) {
  const __m512 r = (__m512)x;
  return {(vd8)_mm512_cvtps_pd(_mm512_castps512_ps256(r)), (vd8)_mm512_cvtps_pd(_mm512_extractf32x8_ps(r, 1))};
}

inline vec<float> narrow(const vd& x) {
  const __m256 lo = _mm512_cvtpd_ps((__m512d)x.lo), hi = _mm512_cvtpd_ps((__m512d)x.hi);
  return (vec<float>)_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
#else  // by halves through memory (portable to any GCC or Clang with vector extensions)
inline vd widen(const vec<float>& x) {
  vf8 lo, hi;
  std::memcpy(&lo, &x, sizeof(vf8));
  std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof(vf8), sizeof(vf8));
  return {__builtin_convertvector(lo, vd8), __builtin_convertvector(hi, vd8)};
}

inline vec<float> narrow(const vd& x) {
  const vf8 lo = __builtin_convertvector(x.lo, vf8), hi = __builtin_convertvector(x.hi, vf8);
  vec<float> r;
  std::memcpy(&r, &lo, sizeof(vf8));
  std::memcpy(reinterpret_cast<char*>(&r) + sizeof(vf8), &hi, sizeof(vf8));
  return r;
}
#endif

// The first ne (<= V) lanes from p, the rest 0, and back.
template <typename S>
inline vd load_d(const S* p, int64_t ne);

template <>
inline vd load_d<float>(const float* p, int64_t ne) {
  return widen(load<float>(p, ne));
}

template <>
inline vd load_d<double>(const double* p, int64_t ne) {
  vd r = {};
  if (ne == V) {
    r = {get8(p), get8(p + V / 2)};
  } else {
    for (int64_t i = 0; i < ne; ++i) (i < V / 2 ? r.lo : r.hi)[i % (V / 2)] = p[i];
  }
  return r;
}

inline vd to_vd(const vec<float>& x) { return widen(x); }
inline vd to_vd(const vec<double>& x) {
  vd r;
  std::memcpy(&r, &x, sizeof(r));
  return r;
}

template <typename S>
inline void store_d(S* p, const vd& x, int64_t ne);

template <>
inline void store_d<float>(float* p, const vd& x, int64_t ne) {
  store<float>(p, narrow(x), ne);
}

template <>
inline void store_d<double>(double* p, const vd& x, int64_t ne) {
  if (ne == V) {
    put8(p, x.lo);
    put8(p + V / 2, x.hi);
  } else {
    for (int64_t i = 0; i < ne; ++i) p[i] = (i < V / 2 ? x.lo : x.hi)[i % (V / 2)];
  }
}

// A key more than e^RESCALE above the state's scale moves the scale to itself (step); the sums
// stay below L e^RESCALE, far inside double's range.
constexpr double RESCALE = 200;

// e^x for exponents x <= RESCALE (-inf included), clamped below at a normal double (no slow
// subnormal results).  float64 inputs: the C library.  float32: 2^y = 2^n 2^f, y = x log2(e), n its nearest integer, f = y - n (|f| <= 1/2)
// formed in double, so only f's own rounding to float enters.
//   exp_fast: 2^f by cpu_vec.h's float exp2_frac, within about 1e-7 relative for every x;
//   exp_acc: 2^f - 1 = f q(f), q the same polynomial less its constant term, in double: e^x - 1
//   is right relative to itself too.  The adjoint is rescaled by such factors step after step,
//   so their error compounds (a float e^x near 1 is off by up to 3e-8 every step, 6e-4 over 20k
//   steps of slow decay).
template <typename S>
inline vd exp_fast(const vd& x);
template <typename S>
inline vd exp_acc(const vd& x);

inline vd exp_libm(const vd& x) {
  static const double floor_ = std::log(std::numeric_limits<double>::min()) + 0.5;
  vd r;
  for (int i = 0; i < V / 2; ++i) {
    r.lo[i] = std::exp(std::max(x.lo[i], floor_));
    r.hi[i] = std::exp(std::max(x.hi[i], floor_));
  }
  return r;
}

template <>
inline vd exp_fast<double>(const vd& x) {
  return exp_libm(x);
}

template <>
inline vd exp_acc<double>(const vd& x) {
  return exp_libm(x);
}

// y = x log2(e) clamped at -EXP2_MIN, its nearest integer n and f = y - n; 2^n times r.  The clamp is
// far below float's: the sums may stand up to e^RESCALE above the scale they are relative to, so
// a read's e^(P - m) far below float's range can still weigh (2^-1000 is a normal double).
constexpr double EXP2_MIN = 1000;
#ifdef __AVX512F__
inline void split_exp2(vd8 x, vd8& n, vd8& f) {
  const __m512d y = _mm512_max_pd(_mm512_mul_pd((__m512d)x, _mm512_set1_pd(1.4426950408889634)), _mm512_set1_pd(-EXP2_MIN));
  n = (vd8)_mm512_roundscale_pd(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  f = (vd8)y - n;
}

inline vd8 times_2n(vd8 r, vd8 n) { return (vd8)_mm512_scalef_pd((__m512d)r, (__m512d)n); }
#else
inline void split_exp2(vd8 x, vd8& n, vd8& f) {
  vd8 y = x * 1.4426950408889634;
  y = y < -EXP2_MIN ? vd8{} - EXP2_MIN : y;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52: adding and subtracting it rounds to an integer
  n = (y + magic) - magic;
  f = y - n;
}

inline vd8 times_2n(vd8 r, vd8 n) { return r * (vd8)((__builtin_convertvector(n, vm8) + 1023) << 52); }
#endif

template <>
__attribute__((always_inline)) inline vd exp_fast<float>(const vd& x) {  // inlined: vectors stay in registers
  vd n, f;
  split_exp2(x.lo, n.lo, f.lo);
  split_exp2(x.hi, n.hi, f.hi);
  const vd p = widen(exp2_frac(narrow(f)));
  return {times_2n(p.lo, n.lo), times_2n(p.hi, n.hi)};
}

inline vd8 exp2m1_frac(vd8 f) {  // 2^f - 1 for |f| <= 1/2
  vd8 g = f * 1.5337576834423183e-04 + 1.339986036322529e-03;
  g = g * f + 9.61851953434672e-03;
  g = g * f + 5.550328997517387e-02;
  g = g * f + 2.4022646608714063e-01;
  g = g * f + 6.931472056005101e-01;
  return g * f;
}

template <>
__attribute__((always_inline)) inline vd exp_acc<float>(const vd& x) {
  vd n, f;
  split_exp2(x.lo, n.lo, f.lo);
  split_exp2(x.hi, n.hi, f.hi);
  return {times_2n(exp2m1_frac(f.lo) + 1.0, n.lo), times_2n(exp2m1_frac(f.hi) + 1.0, n.hi)};
}

// The state after a step: (a, b) relative to e^p (p: the scale's exponent, lowered by w a step).
struct State {
  vd a, b, p;
};
constexpr int64_t NS = 3 * V;  // doubles a saved state takes

inline State empty_state() { return {vd{}, vd{}, dsplat(-std::numeric_limits<double>::infinity())}; }

// By halves passed by value (put8): a memcpy of the State itself would keep it in memory.
inline void put(double* dst, const State& s) {
  put8(dst, s.a.lo), put8(dst + V / 2, s.a.hi), put8(dst + V, s.b.lo), put8(dst + 3 * V / 2, s.b.hi);
  put8(dst + 2 * V, s.p.lo), put8(dst + 5 * V / 2, s.p.hi);
}

inline State get(const double* src) {
  auto part = [src](int i) { return vd{get8(src + i * V), get8(src + i * V + V / 2)}; };
  return {part(0), part(1), part(2)};
}

// Whether a lane of m is set
inline bool any(const vm& m) {
  const vm8 x = m.lo | m.hi;
#ifdef __AVX512F__
  return _mm512_test_epi64_mask((__m512i)x, (__m512i)x) != 0;
#else
  for (int i = 0; i < V / 2; ++i)
    if (x[i]) return true;
  return false;
#endif
}

// Adds key t (allowed) to the state.  The key weighs e^d, d = k_t - (p_{t-1} - w), and the scale
// decays with the state (p_t = p_{t-1} - w) unless d > RESCALE: then the scale becomes the key's
// (p_t = k_t) and the state weighs e^-d < e^-RESCALE.  So the sums only grow, by one term a step, with
// no factor near 1 applied to them again and again (no compounding rounding), and in the usual
// step nothing but the sums is carried to the next (no blend of the scale).  fo, fk: the weights
// of the state before and of the key, relative to e^p_t.
template <typename S>
__attribute__((always_inline)) inline void step(State& s, const vd& kt, const vd& vt, const vd& W, vd* fo, vd* fk) {
  s.p = s.p - W;  // one rounding a step, about 1e-16 of |p|: 1e-9 after 2^24 steps, and the
                  // backward recomputes from the saved states with the same operations
  const vd d = kt - s.p;
  const vm up = gt(d, dsplat(RESCALE));
  if (!any(up)) {
    const vd e = exp_fast<S>(d);
    s.a += e * vt;
    s.b += e;
    if (fo) *fo = dsplat(1), *fk = e;
    return;
  }
  const vd e = exp_fast<S>(sel(up, -d, d));
  s.a = sel(up, e * s.a + vt, s.a + e * vt);
  s.b = sel(up, e * s.b + 1, s.b + e);
  s.p = sel(up, kt, s.p);
  if (fo) *fo = sel(up, e, dsplat(1)), *fk = sel(up, dsplat(1), e);
}

// A masked key: the state only decays.
inline void skip(State& s, const vd& W) { s.p = s.p - W; }

// The read at t from the state before t: y, and m, e2 = e^(u + k_t - m), den (relative to e^m).
struct Read {
  vd y, m, e2, den;
};

template <typename S>
__attribute__((always_inline)) inline Read read_at(const State& s, const vd& kt, const vd& vt, const vd& U, bool kok) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const vd P = s.p;  // p_{t-1}
  const vd bonus = kok ? U + kt : dsplat(ninf);
  vd m = sel(gt(P, bonus), P, bonus);
  m = sel(eq(m, dsplat(ninf)), vd{}, m);
  const vd e1 = exp_fast<S>(P - m);
  const vd e2 = kok ? exp_fast<S>(bonus - m) : vd{};
  const vd num = e1 * s.a + e2 * vt, den = e1 * s.b + e2;
  const vm pos = gt(den, vd{});
  const vd y = sel(pos, num / sel(pos, den, dsplat(1)), vd{});
  return {y, m, e2, den};
}

struct Shape {
  int64_t B, L, C, Q, T, nCb, nC, okb;
};

struct Ptrs {
  const uint8_t* ok;
  const int64_t* rs;
  const int64_t* rq;
};

// Whether a lane of x is NaN
template <typename S>
inline bool any_nan(const vec<S>& x) {
  for (int i = 0; i < V; ++i)
    if (x[i] != x[i]) return true;
  return false;
}

template <typename S>
void forward_kernel(const Shape& zr, const Ptrs& ptr, const S* k, const S* v, const S* w, const S* u, S* y,
                    double* hs, uint8_t* bad) {
  at::parallel_for(0, zr.B * zr.nCb, 1, [=](int64_t i0, int64_t i1) {  // by value: no pointer reloads
    const Shape z = zr;  // locals: the stores below cannot change them (no reloads)
    const Ptrs pt = ptr;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / z.nCb, c0 = (it % z.nCb) * V, ne = std::min<int64_t>(V, z.C - c0);
      const vd W = load_d(w + c0, ne), U = load_d(u + c0, ne);
      const S* kb = k + b * z.L * z.C + c0;
      const S* vb = v + b * z.L * z.C + c0;
      const uint8_t* ok = pt.ok ? pt.ok + b * z.okb : nullptr;
      double* hsi = hs ? hs + it * z.nC * NS : nullptr;
      State s = empty_state();
      vec<S> nonfinite = {};  // NaN once a key or value is NaN or infinite (off the recurrence's path)
      for (int64_t t = 0; t < z.L; ++t) {
        if (hsi && t % z.T == 0) put(hsi + (t / z.T) * NS, s);
        const bool kok = !ok || ok[t];
        const vec<S> ks = load(kb + t * z.C, ne), vs = load(vb + t * z.C, ne);
        nonfinite += (ks - ks) + (vs - vs);
        const vd kt = to_vd(ks), vt = to_vd(vs);
        if (pt.rs[t + 1] > pt.rs[t]) {
          const Read r = read_at<S>(s, kt, vt, U, kok);
          for (int64_t j = pt.rs[t]; j < pt.rs[t + 1]; ++j) store_d(y + (b * z.Q + pt.rq[j]) * z.C + c0, r.y, ne);
        }
        if (kok) {
          step<S>(s, kt, vt, W, nullptr, nullptr);
        } else {
          skip(s, W);
        }
      }
      bad[it] = any_nan<S>(nonfinite);
    }
  });
}

constexpr int64_t MAX_T = 64;  // largest chunk the backward recomputes (its states stay in L1)

template <typename S>
void backward_kernel(const Shape& zr, const Ptrs& ptr, const S* gy, const S* k, const S* v, const S* w, const S* u,
                     const double* hs, S* dk, S* dv, double* dwp, double* dup) {
  at::parallel_for(0, zr.B * zr.nCb, 1, [=](int64_t i0, int64_t i1) {  // by value: no pointer reloads
    const Shape z = zr;  // locals: the stores below cannot change them (no reloads)
    const Ptrs pt = ptr;
    State st[MAX_T + 1];  // the chunk's states: st[i] before position t0 + i
    vd fos[MAX_T], fks[MAX_T];  // the steps' state and key weights
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / z.nCb, c0 = (it % z.nCb) * V, ne = std::min<int64_t>(V, z.C - c0);
      const vd W = load_d(w + c0, ne), U = load_d(u + c0, ne);
      const int64_t base = b * z.L * z.C + c0;
      const uint8_t* ok = pt.ok ? pt.ok + b * z.okb : nullptr;
      const double* hsi = hs + it * z.nC * NS;
      vd la = {}, lb = {}, pr = {}, mr = dsplat(std::numeric_limits<double>::infinity());
      vd dw_acc = {}, du_acc = {};
      for (int64_t c = z.nC - 1; c >= 0; --c) {
        const int64_t t0 = c * z.T, t1 = std::min(z.L, t0 + z.T);
        State s = get(hsi + c * NS);
        st[0] = s;
        for (int64_t t = t0; t < t1; ++t) {  // the chunk's states again
          vd fo = dsplat(1), fk = {};
          if (!ok || ok[t]) {
            step<S>(s, load_d(k + base + t * z.C, ne), load_d(v + base + t * z.C, ne), W, &fo, &fk);
          } else {
            skip(s, W);
          }
          st[t - t0 + 1] = s;
          fos[t - t0] = fo;
          fks[t - t0] = fk;
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const bool kok = !ok || ok[t];
          const State& sp = st[t - t0];
          const State& sc = st[t - t0 + 1];
          const vd kt = load_d(k + base + t * z.C, ne), vt = load_d(v + base + t * z.C, ne);
          // the step S_t = e^-w S_{t-1} + e^k_t (v_t, 1), lambda_t = dL/dS_t: E = e^(s_t + p_t)
          const vd tt = dsplat(double(t));
          const vd E = exp_fast<S>(sc.p - (pr - 1 - tt) * W - mr);
          dw_acc -= E * fos[t - t0] * (la * sp.a + lb * sp.b);
          vd gk = {}, gv = {};
          if (kok) {
            const vd e = E * fks[t - t0];
            gv = e * la;
            gk = e * (la * vt + lb);
          }
          const int64_t r0 = pt.rs[t], r1 = pt.rs[t + 1];
          if (r1 > r0) {  // the read at t, from S_{t-1}
            vd G = {};
            for (int64_t j = r0; j < r1; ++j) G += load_d(gy + (b * z.Q + pt.rq[j]) * z.C + c0, ne);
            const Read r = read_at<S>(sp, kt, vt, U, kok);
            const vm pos = gt(r.den, vd{});
            const vd q = sel(pos, G / sel(pos, r.den, dsplat(1)), vd{});
            gv += r.e2 * q;
            const vd g_bonus = r.e2 * q * (vt - r.y);
            gk += g_bonus;
            du_acc += g_bonus;
            // lambda_{t-1} = e^-w lambda_t + e^-m (q, -q y): the larger scale kept
            const vd decayed = -(pr - tt) * W - mr, cs = -r.m;
            const vd d = cs - decayed;
            const vm newer = ge(d, vd{}) & pos;
            const vd e = exp_acc<S>(-absv(d));
            const vd ca = q, cb = -q * r.y;
            la = sel(newer, la * e + ca, la + ca * e);
            lb = sel(newer, lb * e + cb, lb + cb * e);
            pr = sel(newer, tt, pr);
            mr = sel(newer, r.m, mr);
          }
          store_d(dk + base + t * z.C, gk, ne);
          store_d(dv + base + t * z.C, gv, ne);
        }
      }
      store_d(dwp + it * V, dw_acc, V);
      store_d(dup + it * V, du_acc, V);
    }
  });
}

// Every operand's shape, dtype, device and layout, and every index the kernels follow (rs, rq),
// so that a direct call with bad operands raises instead of writing out of bounds.
void check_inputs(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u,
                  const c10::optional<at::Tensor>& ok, const at::Tensor& rs, const at::Tensor& rq, int64_t Q) {
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes(), "canvas_rwkv_cpu: k and v must be (B, L, C) alike");
  TORCH_CHECK(k.scalar_type() == at::kFloat || k.scalar_type() == at::kDouble,
              "canvas_rwkv_cpu: k must be float32 or float64");
  TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(2) && u.size(0) == k.size(2),
              "canvas_rwkv_cpu: w and u must be (C,)");
  for (const at::Tensor* x : {&k, &v, &w, &u}) {
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == k.scalar_type(),
                "canvas_rwkv_cpu: contiguous CPU tensors of one dtype expected");
  }
  const int64_t L = k.size(1);
  TORCH_CHECK(Q >= 0, "canvas_rwkv_cpu: Q must be >= 0, got ", Q);
  TORCH_CHECK(rs.device().is_cpu() && rq.device().is_cpu() && rs.scalar_type() == at::kLong &&
                  rq.scalar_type() == at::kLong && rs.is_contiguous() && rq.is_contiguous() && rs.dim() == 1 &&
                  rq.dim() == 1 && rs.numel() == L + 1,
              "canvas_rwkv_cpu: rs (L + 1,) and rq must be contiguous 1-D CPU int64");
  const int64_t* s = rs.data_ptr<int64_t>();
  TORCH_CHECK(s[0] == 0 && s[L] == rq.numel(), "canvas_rwkv_cpu: rs must start at 0 and end at len(rq) = ",
              rq.numel(), ", got ", s[0], " and ", s[L]);
  for (int64_t t = 0; t < L; ++t) {
    TORCH_CHECK(s[t + 1] >= s[t], "canvas_rwkv_cpu: rs must be non-decreasing (rs[", t + 1, "] = ", s[t + 1],
                " < rs[", t, "] = ", s[t], ")");
  }
  const int64_t* q = rq.data_ptr<int64_t>();
  for (int64_t j = 0; j < rq.numel(); ++j) {
    TORCH_CHECK(q[j] >= 0 && q[j] < Q, "canvas_rwkv_cpu: rq[", j, "] = ", q[j], " is not a query in [0, ", Q, ")");
  }
  if (ok) {
    TORCH_CHECK(ok->device().is_cpu() && ok->scalar_type() == at::kBool && ok->is_contiguous() && ok->dim() == 2 &&
                    ok->size(1) == L && (ok->size(0) == 1 || ok->size(0) == k.size(0)),
                "canvas_rwkv_cpu: key_ok must be a contiguous CPU bool (B|1, L)");
  }
}

Shape shape_of(const at::Tensor& k, const c10::optional<at::Tensor>& ok, int64_t Q, int64_t T) {
  TORCH_CHECK(T >= 1 && T <= MAX_T, "canvas_rwkv_cpu: T must be in 1..", MAX_T);
  Shape z;
  z.B = k.size(0), z.L = k.size(1), z.C = k.size(2), z.Q = Q, z.T = T;
  z.nCb = (z.C + V - 1) / V, z.nC = (z.L + T - 1) / T;
  z.okb = ok && ok->size(0) > 1 ? z.L : 0;
  return z;
}

Ptrs ptrs_of(const c10::optional<at::Tensor>& ok, const at::Tensor& rs, const at::Tensor& rq) {
  return {ok ? reinterpret_cast<const uint8_t*>(ok->data_ptr()) : nullptr, rs.data_ptr<int64_t>(),
          rq.data_ptr<int64_t>()};
}

// [y (B, Q, C), the states at the chunk starts (save; float64, else empty), a bool: a key or value
// was NaN or infinite (y is then not the WKV)].
std::vector<at::Tensor> wkv_fwd(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u,
                                const c10::optional<at::Tensor>& ok, const at::Tensor& rs, const at::Tensor& rq,
                                int64_t Q, int64_t T, bool save) {
  use_torch_threads();
  check_inputs(k, v, w, u, ok, rs, rq, Q);
  const Shape z = shape_of(k, ok, Q, T);
  auto y = at::zeros({z.B, Q, z.C}, k.options());
  auto hs = at::empty({save ? z.B * z.nCb * z.nC * NS : 0}, k.options().dtype(at::kDouble));
  auto bad = at::zeros({z.B * z.nCb}, k.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_fwd", [&] {
    forward_kernel<scalar_t>(z, ptrs_of(ok, rs, rq), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             w.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             save ? hs.data_ptr<double>() : nullptr, bad.data_ptr<uint8_t>());
  });
  return {y, hs, bad.any()};
}

// [dk, dv, dw, du] from gy (B, Q, C) and wkv_fwd's saved states.
std::vector<at::Tensor> wkv_bwd(const at::Tensor& gy, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                const at::Tensor& u, const c10::optional<at::Tensor>& ok, const at::Tensor& rs,
                                const at::Tensor& rq, const at::Tensor& hs, int64_t T) {
  use_torch_threads();
  TORCH_CHECK(gy.dim() == 3 && gy.device().is_cpu() && gy.is_contiguous() && gy.scalar_type() == k.scalar_type() &&
                  k.dim() == 3 && gy.size(0) == k.size(0) && gy.size(2) == k.size(2),
              "canvas_rwkv_cpu: gy must be a contiguous CPU (B, Q, C) of k's dtype");
  check_inputs(k, v, w, u, ok, rs, rq, gy.size(1));
  const Shape z = shape_of(k, ok, gy.size(1), T);
  TORCH_CHECK(hs.device().is_cpu() && hs.scalar_type() == at::kDouble && hs.is_contiguous() &&
                  hs.numel() == z.B * z.nCb * z.nC * NS,
              "canvas_rwkv_cpu: hs is not wkv_fwd's saved states for these shapes");
  auto dk = at::empty_like(k), dv = at::empty_like(v);
  auto dwp = at::empty({z.B, z.nCb * V}, k.options().dtype(at::kDouble));
  auto dup = at::empty({z.B, z.nCb * V}, k.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_bwd", [&] {
    backward_kernel<scalar_t>(z, ptrs_of(ok, rs, rq), gy.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                              v.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                              hs.data_ptr<double>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                              dwp.data_ptr<double>(), dup.data_ptr<double>());
  });
  auto dw = (z.B == 1 ? dwp[0] : dwp.sum(0)).narrow(0, 0, z.C).to(k.scalar_type()).contiguous();
  auto du = (z.B == 1 ? dup[0] : dup.sum(0)).narrow(0, 0, z.C).to(k.scalar_type()).contiguous();
  return {dk, dv, dw, du};
}

}  // namespace

TORCH_LIBRARY(canvas_rwkv_cpu, m) {
  m.def("wkv_fwd(Tensor k, Tensor v, Tensor w, Tensor u, Tensor? key_ok, Tensor rs, Tensor rq, int Q, int T, "
        "bool save) -> Tensor[]");
  m.def("wkv_bwd(Tensor gy, Tensor k, Tensor v, Tensor w, Tensor u, Tensor? key_ok, Tensor rs, Tensor rq, "
        "Tensor hs, int T) -> Tensor[]");
  m.impl("wkv_fwd", c10::DispatchKey::CPU, &wkv_fwd);
  m.impl("wkv_bwd", c10::DispatchKey::CPU, &wkv_bwd);
}
