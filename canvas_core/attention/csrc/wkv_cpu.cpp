// RWKV-4's WKV read at given positions, forward and backward, for CPUs.
//
// One work item is a batch row and a block of 16 channels.  It steps through the keys in order
// carrying the log-space state (a, b) = sum_j e^(k_j - (t - j) w - p) (v_j, 1) of its 16 lanes,
// whose exponent p = kref - (t - jref) w is kept as the key that set it and that key's position
// (no running sum of decays, so p carries one rounding, not one per step).  Adding a key moves
// the scale to the larger of the decayed state and the key: one of the two weights is 1 and the
// other e^(-|difference|), one exp per step.  Reads are written where queries read; the state at
// the start of every chunk of T positions is saved for the backward.
//
// The backward walks the chunks in reverse: it recomputes a chunk's states from the saved start,
// then carries the adjoint of the state, lambda = e^s (la, lb), back through the chunk.  Its scale
// s is kept as the read that set it (position pr, exponent mr), s = -(pr - 1 - t) w - mr, so every
// exponent the gradients take is at most 0.  Work items are independent (each writes its own
// slice of dk, dv and of the dw, du partial sums its caller adds in a fixed order): the results do
// not depend on the thread count.  Built at first use by canvas_core.kernels.cpu_build.
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

// e^x for max-relative exponents x <= 0 (-inf included), clamped below at the smallest normal
// exponent as the PyTorch path clamps (no slow subnormal results).
inline vec<float> exp_rel(vec<float> x) {
  vec<float> y = x * 1.4426950408889634f;
  const vec<float> lo = vec<float>{} - 125.0f, hi = vec<float>{} + 1.0f;
  y = y < lo ? lo : y;
  y = y > hi ? hi : y;
  return exp2_in_range(y);
}

inline vec<double> exp_rel(vec<double> x) {
  static const double floor_ = std::log(std::numeric_limits<double>::min()) + 0.5;
  vec<double> r;
  for (int i = 0; i < V; ++i) r[i] = std::exp(std::max(x[i], floor_));
  return r;
}

template <typename S>
inline vec<S> absv(vec<S> x) {
  return x < vec<S>{} ? -x : x;
}

// The state after a step: (a, b) relative to e^p, p = kref - (t - jref) w.
template <typename S>
struct State {
  vec<S> a, b, kref, jref;
};

template <typename S>
inline State<S> empty_state() {
  return {vec<S>{}, vec<S>{}, splat<S>(-std::numeric_limits<S>::infinity()), vec<S>{}};
}

template <typename S>
inline void put(S* dst, const State<S>& s) {
  std::memcpy(dst, &s.a, sizeof(vec<S>));
  std::memcpy(dst + V, &s.b, sizeof(vec<S>));
  std::memcpy(dst + 2 * V, &s.kref, sizeof(vec<S>));
  std::memcpy(dst + 3 * V, &s.jref, sizeof(vec<S>));
}

template <typename S>
inline State<S> get(const S* src) {
  State<S> s;
  std::memcpy(&s.a, src, sizeof(vec<S>));
  std::memcpy(&s.b, src + V, sizeof(vec<S>));
  std::memcpy(&s.kref, src + 2 * V, sizeof(vec<S>));
  std::memcpy(&s.jref, src + 3 * V, sizeof(vec<S>));
  return s;
}

// Adds key t (allowed) to the state; f = e^(-|k_t - (p_{t-1} - w)|), won: the key set the scale.
template <typename S>
inline void step(State<S>& s, S t, const vec<S>& kt, const vec<S>& vt, const vec<S>& W, vec<S>* f_out,
                 vec<S>* won_out) {
  const vec<S> tt = splat<S>(t);
  const vec<S> old = s.kref - (tt - s.jref) * W;  // p_{t-1} - w
  const vec<S> d = kt - old;
  const auto won = d > vec<S>{};
  const vec<S> f = exp_rel(-absv<S>(d));
  s.a = won ? f * s.a + vt : s.a + f * vt;
  s.b = won ? f * s.b + 1 : s.b + f;
  s.kref = won ? kt : s.kref;
  s.jref = won ? tt : s.jref;
  if (f_out) {
    *f_out = f;
    *won_out = won ? splat<S>(1) : vec<S>{};
  }
}

// The read at t from the state before t: y, and m, e2 = e^(u + k_t - m), den (relative to e^m).
template <typename S>
struct Read {
  vec<S> y, m, e2, den;
};

template <typename S>
inline Read<S> read_at(const State<S>& s, S t, const vec<S>& kt, const vec<S>& vt, const vec<S>& W,
                       const vec<S>& U, bool kok) {
  const S ninf = -std::numeric_limits<S>::infinity();
  const vec<S> P = s.kref - (splat<S>(t) - 1 - s.jref) * W;  // p_{t-1}
  const vec<S> bonus = kok ? U + kt : splat<S>(ninf);
  vec<S> m = P > bonus ? P : bonus;
  m = m == splat<S>(ninf) ? vec<S>{} : m;
  const vec<S> e1 = exp_rel(P - m);
  const vec<S> e2 = kok ? exp_rel(bonus - m) : vec<S>{};
  const vec<S> num = e1 * s.a + e2 * vt, den = e1 * s.b + e2;
  const auto pos = den > vec<S>{};
  const vec<S> y = pos ? num / (pos ? den : splat<S>(1)) : vec<S>{};
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

template <typename S>
void forward_kernel(const Shape& zr, const Ptrs& ptr, const S* k, const S* v, const S* w, const S* u, S* y, S* hs) {
  at::parallel_for(0, zr.B * zr.nCb, 1, [=](int64_t i0, int64_t i1) {  // by value: no pointer reloads
    const Shape z = zr;  // locals: the stores below cannot change them (no reloads)
    const Ptrs pt = ptr;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / z.nCb, c0 = (it % z.nCb) * V, ne = std::min<int64_t>(V, z.C - c0);
      const vec<S> W = load(w + c0, ne), U = load(u + c0, ne);
      const S* kb = k + b * z.L * z.C + c0;
      const S* vb = v + b * z.L * z.C + c0;
      const uint8_t* ok = pt.ok ? pt.ok + b * z.okb : nullptr;
      S* hsi = hs ? hs + it * z.nC * 4 * V : nullptr;
      State<S> s = empty_state<S>();
      for (int64_t t = 0; t < z.L; ++t) {
        if (hsi && t % z.T == 0) put(hsi + (t / z.T) * 4 * V, s);
        const bool kok = !ok || ok[t];
        const vec<S> kt = load(kb + t * z.C, ne), vt = load(vb + t * z.C, ne);
        if (pt.rs[t + 1] > pt.rs[t]) {
          const Read<S> r = read_at(s, S(t), kt, vt, W, U, kok);
          for (int64_t j = pt.rs[t]; j < pt.rs[t + 1]; ++j) store(y + (b * z.Q + pt.rq[j]) * z.C + c0, r.y, ne);
        }
        if (kok) step<S>(s, S(t), kt, vt, W, nullptr, nullptr);
      }
    }
  });
}

constexpr int64_t MAX_T = 64;  // largest chunk the backward recomputes (its states stay in L1)

template <typename S>
void backward_kernel(const Shape& zr, const Ptrs& ptr, const S* gy, const S* k, const S* v, const S* w, const S* u,
                     const S* hs, S* dk, S* dv, S* dwp, S* dup) {
  at::parallel_for(0, zr.B * zr.nCb, 1, [=](int64_t i0, int64_t i1) {  // by value: no pointer reloads
    const Shape z = zr;  // locals: the stores below cannot change them (no reloads)
    const Ptrs pt = ptr;
    State<S> st[MAX_T + 1];  // the chunk's states: st[i] before position t0 + i
    vec<S> fs[MAX_T], wins[MAX_T];
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / z.nCb, c0 = (it % z.nCb) * V, ne = std::min<int64_t>(V, z.C - c0);
      const vec<S> W = load(w + c0, ne), U = load(u + c0, ne);
      const int64_t base = b * z.L * z.C + c0;
      const uint8_t* ok = pt.ok ? pt.ok + b * z.okb : nullptr;
      const S* hsi = hs + it * z.nC * 4 * V;
      vec<S> la = {}, lb = {}, pr = {}, mr = splat<S>(std::numeric_limits<S>::infinity());
      vec<S> dw_acc = {}, du_acc = {};
      for (int64_t c = z.nC - 1; c >= 0; --c) {
        const int64_t t0 = c * z.T, t1 = std::min(z.L, t0 + z.T);
        State<S> s = get(hsi + c * 4 * V);
        st[0] = s;
        for (int64_t t = t0; t < t1; ++t) {  // the chunk's states again
          vec<S> f = splat<S>(1), won = {};
          if (!ok || ok[t]) step<S>(s, S(t), load(k + base + t * z.C, ne), load(v + base + t * z.C, ne), W, &f, &won);
          st[t - t0 + 1] = s;
          fs[t - t0] = f;
          wins[t - t0] = won;
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const bool kok = !ok || ok[t];
          const State<S>& sp = st[t - t0];
          const State<S>& sc = st[t - t0 + 1];
          const vec<S> kt = load(k + base + t * z.C, ne), vt = load(v + base + t * z.C, ne);
          const vec<S> f = fs[t - t0];
          const auto won = wins[t - t0] > vec<S>{};
          // the step S_t = e^-w S_{t-1} + e^k_t (v_t, 1), lambda_t = dL/dS_t: E = e^(s_t + p_t)
          const vec<S> E = exp_rel(sc.kref - mr - (pr - 1 - sc.jref) * W);
          const vec<S> fo = won ? f : splat<S>(1);
          dw_acc -= E * fo * (la * sp.a + lb * sp.b);
          vec<S> gk = {}, gv = {};
          if (kok) {
            const vec<S> e = won ? E : E * f;
            gv = e * la;
            gk = e * (la * vt + lb);
          }
          const int64_t r0 = pt.rs[t], r1 = pt.rs[t + 1];
          if (r1 > r0) {  // the read at t, from S_{t-1}
            vec<S> G = {};
            for (int64_t j = r0; j < r1; ++j) G += load(gy + (b * z.Q + pt.rq[j]) * z.C + c0, ne);
            const Read<S> r = read_at(sp, S(t), kt, vt, W, U, kok);
            const auto pos = r.den > vec<S>{};
            const vec<S> q = pos ? G / (pos ? r.den : splat<S>(1)) : vec<S>{};
            gv += r.e2 * q;
            const vec<S> g_bonus = r.e2 * q * (vt - r.y);
            gk += g_bonus;
            du_acc += g_bonus;
            // lambda_{t-1} = e^-w lambda_t + e^-m (q, -q y): the larger scale kept
            const vec<S> tt = splat<S>(S(t));
            const vec<S> decayed = -(pr - tt) * W - mr, cs = -r.m;
            const vec<S> d = cs - decayed;
            const auto newer = (d >= vec<S>{}) & pos;
            const vec<S> e = exp_rel(-absv<S>(d));
            const vec<S> ca = q, cb = -q * r.y;
            la = newer ? la * e + ca : la + ca * e;
            lb = newer ? lb * e + cb : lb + cb * e;
            pr = newer ? tt : pr;
            mr = newer ? r.m : mr;
          }
          store(dk + base + t * z.C, gk, ne);
          store(dv + base + t * z.C, gv, ne);
        }
      }
      store(dwp + it * V, dw_acc, V);
      store(dup + it * V, du_acc, V);
    }
  });
}

void check_inputs(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u,
                  const c10::optional<at::Tensor>& ok, const at::Tensor& rs, const at::Tensor& rq) {
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes(), "canvas_rwkv_cpu: k and v must be (B, L, C) alike");
  TORCH_CHECK(w.dim() == 1 && u.dim() == 1 && w.size(0) == k.size(2) && u.size(0) == k.size(2),
              "canvas_rwkv_cpu: w and u must be (C,)");
  for (const at::Tensor* x : {&k, &v, &w, &u}) {
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous() && x->scalar_type() == k.scalar_type(),
                "canvas_rwkv_cpu: contiguous CPU tensors of one dtype expected");
  }
  TORCH_CHECK(rs.scalar_type() == at::kLong && rq.scalar_type() == at::kLong && rs.is_contiguous() &&
                  rq.is_contiguous() && rs.numel() == k.size(1) + 1,
              "canvas_rwkv_cpu: rs (L + 1,) and rq must be contiguous int64");
  if (ok) {
    TORCH_CHECK(ok->scalar_type() == at::kBool && ok->is_contiguous() && ok->dim() == 2 &&
                    ok->size(1) == k.size(1) && (ok->size(0) == 1 || ok->size(0) == k.size(0)),
                "canvas_rwkv_cpu: key_ok must be a contiguous bool (B|1, L)");
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

// y (B, Q, C) and (save) the states at the chunk starts, else an empty tensor.
std::vector<at::Tensor> wkv_fwd(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u,
                                const c10::optional<at::Tensor>& ok, const at::Tensor& rs, const at::Tensor& rq,
                                int64_t Q, int64_t T, bool save) {
  use_torch_threads();
  check_inputs(k, v, w, u, ok, rs, rq);
  const Shape z = shape_of(k, ok, Q, T);
  auto y = at::zeros({z.B, Q, z.C}, k.options());
  auto hs = at::empty({save ? z.B * z.nCb * z.nC * 4 * V : 0}, k.options());
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_fwd", [&] {
    forward_kernel<scalar_t>(z, ptrs_of(ok, rs, rq), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             w.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             save ? hs.data_ptr<scalar_t>() : nullptr);
  });
  return {y, hs};
}

// [dk, dv, dw, du] from gy (B, Q, C) and wkv_fwd's saved states.
std::vector<at::Tensor> wkv_bwd(const at::Tensor& gy, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                const at::Tensor& u, const c10::optional<at::Tensor>& ok, const at::Tensor& rs,
                                const at::Tensor& rq, const at::Tensor& hs, int64_t T) {
  use_torch_threads();
  check_inputs(k, v, w, u, ok, rs, rq);
  const Shape z = shape_of(k, ok, gy.size(1), T);
  TORCH_CHECK(gy.is_contiguous() && gy.scalar_type() == k.scalar_type() && gy.dim() == 3 && gy.size(0) == z.B &&
                  gy.size(2) == z.C,
              "canvas_rwkv_cpu: gy must be a contiguous (B, Q, C) of k's dtype");
  TORCH_CHECK(hs.is_contiguous() && hs.numel() == z.B * z.nCb * z.nC * 4 * V,
              "canvas_rwkv_cpu: hs is not wkv_fwd's saved states for these shapes");
  auto dk = at::empty_like(k), dv = at::empty_like(v);
  auto dwp = at::empty({z.B, z.nCb * V}, k.options()), dup = at::empty({z.B, z.nCb * V}, k.options());
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "wkv_bwd", [&] {
    backward_kernel<scalar_t>(z, ptrs_of(ok, rs, rq), gy.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                              v.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
                              hs.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(),
                              dwp.data_ptr<scalar_t>(), dup.data_ptr<scalar_t>());
  });
  auto dw = (z.B == 1 ? dwp[0] : dwp.sum(0)).narrow(0, 0, z.C).contiguous();
  auto du = (z.B == 1 ? dup[0] : dup.sum(0)).narrow(0, 0, z.C).contiguous();
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
