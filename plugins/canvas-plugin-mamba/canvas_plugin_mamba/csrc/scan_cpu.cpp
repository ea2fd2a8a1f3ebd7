// The selective scan (S6) read at given positions, forward and backward, for CPUs.
//
// One work item is a batch row and a block of 16 channels; its 16-lane state vectors (one per
// state index n) are carried from position to position (in registers as far as they fit, the
// rest in a few cache lines on the stack) while the item steps through the positions in order,
// so no state between two reads is written to a tensor.  The backward walks the positions in
// reverse, chunk by chunk: it recomputes a chunk's states from the state saved at the chunk's
// start, then propagates the adjoint through them.  The depthwise conv and SiLU that make the
// scan's input u can run inside it (conv_scan_read_*): u is formed from the last inputs as the
// item steps, and the conv's gradients as it walks back.  Work items are independent (each
// writes its own slice of every output and of the partial sums its caller adds up in a fixed
// order), so they run on torch's threads with the same results for any thread count.  Built at
// first use by cpu_kernel.py (canvas-core's CpuKernel, which puts cpu_vec.h on the include path),
// with OpenMP where the compiler has it (else one item at a time).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_vec.h"  // canvas-core's lane vectors, exp2, loads / stores, lane sums

namespace {

using namespace canvas_cpu;  // V = 16 channels per work item (one vector of lanes)

constexpr int MAX_N = 64;   // largest state size kept in registers / on the stack
constexpr int MAX_K = 8;    // largest conv width the fused conv keeps in registers

// e^x for any x, clamped to |x log2 e| <= 126 (far beyond where silu, sigmoid and softplus stop
// changing in float32).
inline vec<float> exp_any(vec<float> x) {
  vec<float> y = x * 1.4426950408889634f;
  const vec<float> hi = vec<float>{} + 126.f, lo = vec<float>{} - 126.f;
  y = y > hi ? hi : y;
  y = y < lo ? lo : y;
  return exp2_in_range(y);
}

inline vec<double> exp_any(vec<double> x) {
  vec<double> r;
  for (int i = 0; i < V; ++i) r[i] = std::exp(x[i]);
  return r;
}

struct Shape {
  int64_t Bt, L, E, N, Q, T, nEb, nC;
};

// softplus(x) = max(x, 0) + log(1 + y), y = e^-|x| in (0, 1]: with s = y / (2 + y) <= 1/3,
// log(1 + y) = 2 atanh(s) = 2 (s + s^3 / 3 + ... + s^13 / 13) (relative error below 2e-8)
inline vec<float> softplus(vec<float> x) {
  const vec<float> zero = {};
  const vec<float> ax = x < zero ? -x : x;
  const vec<float> y = exp_any(-ax);
  const vec<float> sv = y / (2.f + y);
  const vec<float> s2 = sv * sv;
  vec<float> p = s2 * (2.f / 13.f) + 2.f / 11.f;
  p = p * s2 + 2.f / 9.f;
  p = p * s2 + 2.f / 7.f;
  p = p * s2 + 2.f / 5.f;
  p = p * s2 + 2.f / 3.f;
  p = p * s2 + 2.f;
  return (x > zero ? x : zero) + sv * p;
}

inline vec<double> softplus(vec<double> x) {
  vec<double> r;
  for (int i = 0; i < V; ++i) r[i] = std::max(x[i], 0.0) + std::log1p(std::exp(-std::abs(x[i])));
  return r;
}

template <typename S>
inline vec<S> sigmoid(vec<S> x) {
  return S(1) / (S(1) + exp_any(-x));
}

// Options of one call: the step input d is delta itself, or (softplus) the raw projection with
// delta = softplus(d); Dsk (E,) or null: the skip term D u_t added to every read of t.
struct Opts {
  bool softplus;
  const void* Dsk;
  // the fused conv (x non-null): u_t = silu(cb + sum_s w[:, s] x_{t - (K - 1) + s}) is computed
  // from x (Bt, L, E; batches xb and rows xs elements apart, e.g. a slice of a wider projection)
  // as the scan steps (wt (K, E), cb (E,)); nothing of size u is stored
  const void* x = nullptr;
  const void* wt = nullptr;
  const void* cb = nullptr;
  int64_t K = 0, xb = 0, xs = 0;
};

// The fused conv of one work item: its weights and bias, and c_t / u_t at position t from the
// input rows at t - K + 1 .. t (zero before the start).
template <typename S>
struct ConvLanes {
  vec<S> w[MAX_K], bias;
  int64_t K = 0;
  const S* x = nullptr;  // this item's column: row t at x + t * xs
  int64_t xs = 0;

  ConvLanes(const Opts& o, int64_t b, int64_t E, int64_t e0, int64_t ne) {
    if (!o.x) return;
    K = o.K;
    xs = o.xs;
    x = static_cast<const S*>(o.x) + b * o.xb + e0;
    for (int64_t s = 0; s < K; ++s) w[s] = load<S>(static_cast<const S*>(o.wt) + s * E + e0, ne);
    bias = load<S>(static_cast<const S*>(o.cb) + e0, ne);
  }
  vec<S> pre(int64_t t, int64_t ne) const {  // c_t
    vec<S> c = bias;
    for (int64_t s = std::max<int64_t>(0, K - 1 - t); s < K; ++s) c += w[s] * load<S>(x + (t - (K - 1) + s) * xs, ne);
    return c;
  }
};

// The one or two cache lines of V lanes at p.  Always inlined: GCC counts a function that only
// prefetches as free of side effects and drops calls to it that it did not inline early.
template <typename S>
__attribute__((always_inline)) inline void prefetch_lanes(const S* p) {
  const char* c = reinterpret_cast<const char*>(p);
  __builtin_prefetch(c);
  __builtin_prefetch(c + sizeof(vec<S>) - 1);
}

// The per-position inputs of one work item at t: the step delta_t (dv) and u_t (uv), and for the
// backward silu'(c_t) (sd, with the fused conv) and d delta_t / d d_t = sigmoid(d_t) (gs, under
// softplus).  The kernels form them for a block of positions before stepping through it: formed
// inside each step, their exp and division chains (about a hundred cycles) sat on the step's
// critical path, beyond what the out-of-order window (a step is a few hundred instructions)
// overlaps with the previous step.
template <typename S>
struct Inputs {
  const Opts& o;
  const ConvLanes<S>& conv;
  const S* u;  // null with the fused conv
  const S* d;  // this item's rows: row t at + t * E
  int64_t E, ne;

  // Asks for row t's cache lines ahead of their use: a work item reads 64 bytes (often across two
  // lines) of rows a few hundred bytes apart, which the hardware's prefetch does not bring in
  // time (the backward, walking the chunks down, asks for the next chunk's rows)
  __attribute__((always_inline)) void prefetch(int64_t t) const {
    prefetch_lanes(d + t * E);
    if (conv.K) {
      prefetch_lanes(conv.x + t * conv.xs);
    } else {
      prefetch_lanes(u + t * E);
    }
  }

  void at(int64_t t, vec<S>& dv, vec<S>& uv, vec<S>* sd, vec<S>* gs) const {
    const vec<S> raw = load<S>(d + t * E, ne);
    dv = o.softplus ? softplus(raw) : raw;
    if (gs && o.softplus) *gs = sigmoid<S>(raw);
    if (conv.K) {
      const vec<S> c = conv.pre(t, ne), sg = sigmoid<S>(c);
      uv = c * sg;
      if (sd) *sd = sg * (S(1) + c * (S(1) - sg));  // silu'(c) = sig (1 + c (1 - sig))
    } else {
      uv = load<S>(u + t * E, ne);
    }
  }
};

// positions whose inputs the forward forms ahead of stepping through them
constexpr int64_t BLOCK = 16;

// Sizes: u, d (Bt, L, E); A2 = A * log2(e) (N, E); Bm (Bt, L, N); C (Bt, Q, N).  The queries
// reading position t are rq[rs[t] .. rs[t + 1]).  Writes y (Bt, Q, E) and the state entering
// every chunk of T positions, Hs (Bt, nC, N, E).
template <typename S>
void forward_kernel(const Shape& z, const Opts& o, const S* u, const S* d, const S* A2, const S* Bm, const S* C,
                    const int64_t* rs, const int64_t* rq, S* y, S* Hs) {
  const S* Dsk = static_cast<const S*>(o.Dsk);
  at::parallel_for(0, z.Bt * z.nEb, 1, [&](int64_t w0, int64_t w1) {
    vec<S> h[MAX_N], a2[MAX_N];
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / z.nEb, e0 = (w % z.nEb) * V, ne = std::min<int64_t>(V, z.E - e0);
      const vec<S> Dv = Dsk ? load<S>(Dsk + e0, ne) : vec<S>{};
      const ConvLanes<S> conv(o, b, z.E, e0, ne);
      for (int64_t n = 0; n < z.N; ++n) {
        h[n] = vec<S>{};
        a2[n] = load<S>(A2 + n * z.E + e0, ne);
      }
      const Inputs<S> in{o, conv, u ? u + b * z.L * z.E + e0 : nullptr, d + b * z.L * z.E + e0, z.E, ne};
      vec<S> dvb[BLOCK], uvb[BLOCK];
      for (int64_t t = 0; t < z.L; ++t) {
        if (t % BLOCK == 0) {
          for (int64_t i = t; i < std::min(z.L, t + BLOCK); ++i) {
            if (i + BLOCK < z.L) in.prefetch(i + BLOCK);
            in.at(i, dvb[i - t], uvb[i - t], nullptr, nullptr);
          }
        }
        if (t % z.T == 0) {
          S* dst = Hs + ((b * z.nC + t / z.T) * z.N) * z.E + e0;
          for (int64_t n = 0; n < z.N; ++n) store<S>(dst + n * z.E, h[n], ne);
        }
        const vec<S> dv = dvb[t % BLOCK], uv = uvb[t % BLOCK];
        const vec<S> duv = dv * uv;
        const S* Br = Bm + (b * z.L + t) * z.N;
        for (int64_t n = 0; n < z.N; ++n) h[n] = exp2_neg(dv * a2[n]) * h[n] + duv * Br[n];
        for (int64_t r = rs[t]; r < rs[t + 1]; ++r) {
          const S* Cr = C + (b * z.Q + rq[r]) * z.N;
          vec<S> acc = Dv * uv;
          for (int64_t n = 0; n < z.N; ++n) acc += Cr[n] * h[n];
          store<S>(y + (b * z.Q + rq[r]) * z.E + e0, acc, ne);
        }
      }
    }
  });
}

// The adjoint.  Per work item, chunks in reverse: the chunk's states h_t and decays a_t are
// recomputed from Hs into a buffer, then for t from the chunk's end down, with g the adjoint of
// h_t (reads of t added first):
//   d(x_t) = g           x_t = delta_t u_t B_t   -> gu, gdelta (via du), gB
//   d(exponent_t) = g * a_t * h_{t-1}            -> gdelta (times A), gA (times delta)
//   g <- a_t * g         (the adjoint of h_{t-1})
// gdelta becomes the raw input's gradient (times sigmoid) under softplus; the skip adds D gy to
// gu at each read and gy u to gD.  gB and gC sum over channels, so each channel block writes its
// own slice of gBp / gCp (nEb, Bt, L|Q, N), summed afterwards; gA and gD per work item, in
// gAp (Bt * nEb, N + 1, V) (row N: gD).  With the fused conv, gu becomes the conv input's
// gradient as the walk goes down: gc_t = gu_t silu'(c_t), gx_t = sum_s w[:, s] gc_{t + K - 1 - s}
// from the last K gc (in registers), gw / gbias per work item in gWp (Bt * nEb, K + 1, V).
template <typename S>
void backward_kernel(const Shape& z, const Opts& o, const S* gy, const S* u, const S* d, const S* A2,
                     const S* Bm, const S* C, const int64_t* rs, const int64_t* rq, const S* Hs, S* gu, S* gd,
                     S* gAp, S* gBp, S* gCp, S* gWp = nullptr) {
  const S ln2 = S(0.6931471805599453);
  const S* Dsk = static_cast<const S*>(o.Dsk);
  at::parallel_for(0, z.Bt * z.nEb, 1, [&](int64_t w0, int64_t w1) {
    std::vector<vec<S>> hbuf((z.T + 1) * z.N), abuf(z.T * z.N), dbuf(z.T), ubuf(z.T), sbuf(o.x ? z.T : 0),
        rbuf(o.softplus ? z.T : 0);  // the chunk's Inputs
    vec<S> g[MAX_N], An[MAX_N], a2[MAX_N], gA[MAX_N], prod[MAX_N];  // prod: products summed over lanes
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / z.nEb, eb = w % z.nEb, e0 = eb * V, ne = std::min<int64_t>(V, z.E - e0);
      const ConvLanes<S> conv(o, b, z.E, e0, ne);
      const Inputs<S> in{o, conv, u ? u + b * z.L * z.E + e0 : nullptr, d + b * z.L * z.E + e0, z.E, ne};
      vec<S> gcr[MAX_K], gw[MAX_K + 1];  // gc_{t+1} .. gc_{t+K-1} (nearest first); gw, then gbias
      for (int64_t s = 0; s <= conv.K; ++s) gw[s] = vec<S>{};
      for (int64_t s = 0; s < conv.K; ++s) gcr[s] = vec<S>{};
      S* gBw = gBp + (eb * z.Bt + b) * z.L * z.N;
      S* gCw = gCp + (eb * z.Bt + b) * z.Q * z.N;
      const vec<S> Dv = Dsk ? load<S>(Dsk + e0, ne) : vec<S>{};
      vec<S> gD = {};
      for (int64_t n = 0; n < z.N; ++n) {
        a2[n] = load<S>(A2 + n * z.E + e0, ne);
        An[n] = a2[n] * ln2;
        g[n] = vec<S>{};
        gA[n] = vec<S>{};
      }
      for (int64_t c = z.nC - 1; c >= 0; --c) {
        const int64_t t0 = c * z.T, t1 = std::min(z.L, t0 + z.T);
        const S* src = Hs + ((b * z.nC + c) * z.N) * z.E + e0;
        for (int64_t n = 0; n < z.N; ++n) hbuf[n] = load<S>(src + n * z.E, ne);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t j = t - t0;
          if (t >= z.T) {  // the rows of the chunk below, read and written next
            in.prefetch(t - z.T);
            prefetch_lanes(Bm + (b * z.L + t - z.T) * z.N);
            prefetch_lanes(gd + (b * z.L + t - z.T) * z.E + e0);
            prefetch_lanes(gu + (b * z.L + t - z.T) * z.E + e0);
          }
          in.at(t, dbuf[j], ubuf[j], o.x ? &sbuf[j] : nullptr, o.softplus ? &rbuf[j] : nullptr);
        }
        for (int64_t t = t0; t < t1; ++t) {  // hbuf[(j + 1) N + n]: the state after position t0 + j
          const int64_t j = t - t0;
          const vec<S> dv = dbuf[j], duv = dv * ubuf[j];
          const S* Br = Bm + (b * z.L + t) * z.N;
          for (int64_t n = 0; n < z.N; ++n) {
            const vec<S> a = exp2_neg(dv * a2[n]);
            abuf[j * z.N + n] = a;
            hbuf[(j + 1) * z.N + n] = a * hbuf[j * z.N + n] + duv * Br[n];
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = (b * z.L + t) * z.E + e0, j = t - t0;
          const vec<S>* ht = &hbuf[(j + 1) * z.N];
          const vec<S>* hp = &hbuf[j * z.N];
          const vec<S>* at = &abuf[j * z.N];
          const vec<S> uv = ubuf[j], dv = dbuf[j];
          vec<S> gskip = {};
          for (int64_t r = rs[t]; r < rs[t + 1]; ++r) {
            const int64_t q = rq[r];
            const vec<S> gq = load<S>(gy + (b * z.Q + q) * z.E + e0, ne);
            const S* Cr = C + (b * z.Q + q) * z.N;
            S* gCr = gCw + q * z.N;
            for (int64_t n = 0; n < z.N; ++n) {
              g[n] += Cr[n] * gq;
              prod[n] = gq * ht[n];
            }
            hsum_rows<S>(prod, z.N, gCr);
            gskip += gq;
          }
          const vec<S> duv = dv * uv;
          const S* Br = Bm + (b * z.L + t) * z.N;
          S* gBr = gBw + t * z.N;
          vec<S> gdu = {}, gexp = {};
          for (int64_t n = 0; n < z.N; ++n) {
            const vec<S> ag = at[n] * g[n];  // also the adjoint of h_{t-1}
            const vec<S> gx = ag * hp[n];
            gexp += gx * An[n];
            gA[n] += gx * dv;
            gdu += g[n] * Br[n];
            prod[n] = g[n] * duv;
            g[n] = ag;
          }
          hsum_rows<S>(prod, z.N, gBr);
          gD += gskip * uv;
          const vec<S> gdelta = gexp + gdu * uv;
          const vec<S> guv = gdu * dv + gskip * Dv;
          if (conv.K) {
            const vec<S> gc = guv * sbuf[j];
            vec<S> gx = conv.w[conv.K - 1] * gc;
            for (int64_t i = 1; i < conv.K; ++i) gx += conv.w[conv.K - 1 - i] * gcr[i - 1];
            for (int64_t i = conv.K - 2; i > 0; --i) gcr[i] = gcr[i - 1];
            if (conv.K > 1) gcr[0] = gc;
            for (int64_t s = std::max<int64_t>(0, conv.K - 1 - t); s < conv.K; ++s)
              gw[s] += gc * load<S>(conv.x + (t - (conv.K - 1) + s) * conv.xs, ne);
            gw[conv.K] += gc;
            store<S>(gu + row, gx, ne);
          } else {
            store<S>(gu + row, guv, ne);
          }
          store<S>(gd + row, o.softplus ? gdelta * rbuf[j] : gdelta, ne);
        }
      }
      S* gAw = gAp + w * (z.N + 1) * V;
      for (int64_t n = 0; n < z.N; ++n) std::memcpy(gAw + n * V, &gA[n], sizeof(vec<S>));
      std::memcpy(gAw + z.N * V, &gD, sizeof(vec<S>));
      if (conv.K) {
        S* gWw = gWp + w * (conv.K + 1) * V;
        for (int64_t s = 0; s <= conv.K; ++s) std::memcpy(gWw + s * V, &gw[s], sizeof(vec<S>));
      }
    }
  });
}

// x (Bt, L, E) whose channels are adjacent (a slice of a wider last dim is fine)
void check_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && (x.stride(2) == 1 || x.size(2) <= 1),
              "canvas_mamba_cpu: x must be a CPU tensor (Bt, L, E) with adjacent channels");
}

void check_inputs(std::initializer_list<const at::Tensor*> ts, const at::Tensor& u) {
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu() && t->scalar_type() == u.scalar_type(),
                "canvas_mamba_cpu: every tensor must be a contiguous CPU tensor of u's dtype");
  }
}

// Causal depthwise convolution and SiLU, fused: c_t = bias + sum_s w[:, s] x_{t - (K - 1) + s},
// u_t = c_t sigmoid(c_t).  x, u: (Bt, L, E); w: (E, K) read as wt (K, E); bias: (E,).
template <typename S>
void conv_silu_fwd_kernel(int64_t Bt, int64_t L, int64_t E, int64_t K, const S* x, const S* wt, const S* bias,
                          S* u) {
  const int64_t nEb = (E + V - 1) / V;
  at::parallel_for(0, Bt * nEb, 1, [&](int64_t w0, int64_t w1) {
    std::vector<vec<S>> wv(K);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / nEb, e0 = (w % nEb) * V, ne = std::min<int64_t>(V, E - e0);
      for (int64_t s = 0; s < K; ++s) wv[s] = load<S>(wt + s * E + e0, ne);
      const vec<S> bv = load<S>(bias + e0, ne);
      for (int64_t t = 0; t < L; ++t) {
        vec<S> c = bv;
        for (int64_t s = std::max<int64_t>(0, K - 1 - t); s < K; ++s)
          c += wv[s] * load<S>(x + (b * L + t - (K - 1) + s) * E + e0, ne);
        store<S>(u + (b * L + t) * E + e0, c / (S(1) + exp_any(-c)), ne);
      }
    }
  });
}

// The adjoint: gc_t = gu_t silu'(c_t) (c recomputed), gx_t = sum_s w[:, s] gc_{t + K - 1 - s},
// gw[:, s] = sum gc_t x_{t - (K - 1) + s}, gbias = sum gc_t; gw / gbias per work item in
// gWp (Bt * nEb, K + 1, V), summed by the caller.
template <typename S>
void conv_silu_bwd_kernel(int64_t Bt, int64_t L, int64_t E, int64_t K, const S* gu, const S* x, const S* wt,
                          const S* bias, S* gx, S* gWp) {
  const int64_t nEb = (E + V - 1) / V;
  at::parallel_for(0, Bt * nEb, 1, [&](int64_t w0, int64_t w1) {
    std::vector<vec<S>> wv(K), gw(K + 1), gc(L);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / nEb, e0 = (w % nEb) * V, ne = std::min<int64_t>(V, E - e0);
      for (int64_t s = 0; s < K; ++s) wv[s] = load<S>(wt + s * E + e0, ne);
      for (int64_t s = 0; s <= K; ++s) gw[s] = vec<S>{};
      const vec<S> bv = load<S>(bias + e0, ne);
      const S* xb = x + b * L * E + e0;
      for (int64_t t = 0; t < L; ++t) {
        vec<S> c = bv;
        for (int64_t s = std::max<int64_t>(0, K - 1 - t); s < K; ++s) c += wv[s] * load<S>(xb + (t - (K - 1) + s) * E, ne);
        const vec<S> sg = S(1) / (S(1) + exp_any(-c));
        gc[t] = load<S>(gu + (b * L + t) * E + e0, ne) * sg * (S(1) + c * (S(1) - sg));
        gw[K] += gc[t];
        for (int64_t s = std::max<int64_t>(0, K - 1 - t); s < K; ++s) gw[s] += gc[t] * load<S>(xb + (t - (K - 1) + s) * E, ne);
      }
      for (int64_t t = 0; t < L; ++t) {
        vec<S> acc = {};
        for (int64_t s = std::max<int64_t>(0, t + K - L); s < K; ++s) acc += wv[s] * gc[t + K - 1 - s];
        store<S>(gx + (b * L + t) * E + e0, acc, ne);
      }
      S* out = gWp + w * (K + 1) * V;
      for (int64_t s = 0; s <= K; ++s) std::memcpy(out + s * V, &gw[s], sizeof(vec<S>));
    }
  });
}

// Per-work-item 16-lane partials (Bt, nEb, rows, V) summed over the batch rows, lanes laid back
// on channels: (rows, E)
at::Tensor lane_sums(const at::Tensor& partials, int64_t E) {
  return partials.sum(0).permute({1, 0, 2}).reshape({partials.size(2), partials.size(1) * V}).narrow(1, 0, E);
}

// Per-channel-block slices (nEb, ...) summed over the blocks
at::Tensor block_sum(const at::Tensor& partials) { return partials.size(0) == 1 ? partials[0] : partials.sum(0); }

// The conv's weight (E, K) and bias (E,) gradients from their partials (Bt, nEb, K + 1, V);
// clones, since a torch.library operator's outputs must not share storage
std::pair<at::Tensor, at::Tensor> conv_grads(const at::Tensor& gWp, int64_t K, int64_t E) {
  auto gW = lane_sums(gWp, E);  // (K + 1, E): the weight's taps then the bias
  return {gW.narrow(0, 0, K).t().clone(at::MemoryFormat::Contiguous), gW[K].clone()};
}

at::Tensor conv_silu_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  use_torch_threads();
  check_inputs({&x, &w, &bias}, x);
  const int64_t Bt = x.size(0), L = x.size(1), E = x.size(2), K = w.size(1);
  auto u = at::empty_like(x);
  auto wt = w.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_silu_fwd", [&] {
    conv_silu_fwd_kernel<scalar_t>(Bt, L, E, K, x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                                   bias.data_ptr<scalar_t>(), u.data_ptr<scalar_t>());
  });
  return u;
}

std::vector<at::Tensor> conv_silu_bwd(const at::Tensor& gu, const at::Tensor& x, const at::Tensor& w,
                                      const at::Tensor& bias) {
  use_torch_threads();
  check_inputs({&gu, &x, &w, &bias}, x);
  const int64_t Bt = x.size(0), L = x.size(1), E = x.size(2), K = w.size(1), nEb = (E + V - 1) / V;
  auto gx = at::empty_like(x);
  auto gWp = at::empty({Bt, nEb, K + 1, V}, x.options());
  auto wt = w.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_silu_bwd", [&] {
    conv_silu_bwd_kernel<scalar_t>(Bt, L, E, K, gu.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                   wt.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                   gWp.data_ptr<scalar_t>());
  });
  auto [gw, gb] = conv_grads(gWp, K, E);
  return {gx, gw, gb};
}

Shape shape_of(const at::Tensor& u, const at::Tensor& A2, const at::Tensor& C, int64_t T) {
  Shape z;
  z.Bt = u.size(0);
  z.L = u.size(1);
  z.E = u.size(2);
  z.N = A2.size(0);
  z.Q = C.size(1);
  z.T = T;
  z.nEb = (z.E + V - 1) / V;
  z.nC = (z.L + T - 1) / T;
  TORCH_CHECK(z.N <= MAX_N, "canvas_mamba_cpu: state size ", z.N, " above ", MAX_N);
  TORCH_CHECK(T >= 1, "canvas_mamba_cpu: chunk length must be positive");
  return z;
}


// Returns y (Bt, Q, E); writes the state entering each chunk into the first Bt * nC * N * E
// elements of Hs (the caller's buffer, kept for the backward).  softplus: d is the raw step
// projection; Dsk (E,), optional: the skip term's D.
at::Tensor scan_read_fwd(const at::Tensor& u, const at::Tensor& d, const at::Tensor& A2, const at::Tensor& Bm,
                         const at::Tensor& C, const at::Tensor& rs, const at::Tensor& rq, int64_t T, at::Tensor& Hs,
                         bool softplus, const c10::optional<at::Tensor>& Dsk) {
  use_torch_threads();
  const Shape z = shape_of(u, A2, C, T);
  check_inputs({&u, &d, &A2, &Bm, &C, &Hs}, u);
  if (Dsk) check_inputs({&*Dsk}, u);
  TORCH_CHECK(Hs.numel() >= z.Bt * z.nC * z.N * z.E, "canvas_mamba_cpu: state buffer too small");
  auto y = at::zeros({z.Bt, z.Q, z.E}, u.options());  // queries reading nothing (read < 0) stay 0
  auto rsc = rs.contiguous(), rqc = rq.contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_read_fwd", [&] {
    const Opts o{softplus, Dsk ? Dsk->data_ptr<scalar_t>() : nullptr};
    forward_kernel<scalar_t>(z, o, u.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), A2.data_ptr<scalar_t>(),
                             Bm.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), rsc.data_ptr<int64_t>(),
                             rqc.data_ptr<int64_t>(), y.data_ptr<scalar_t>(), Hs.data_ptr<scalar_t>());
  });
  return y;
}

std::vector<at::Tensor> scan_read_bwd(const at::Tensor& gy, const at::Tensor& u, const at::Tensor& d,
                                      const at::Tensor& A2, const at::Tensor& Bm, const at::Tensor& C,
                                      const at::Tensor& rs, const at::Tensor& rq, const at::Tensor& Hs, int64_t T,
                                      bool softplus, const c10::optional<at::Tensor>& Dsk) {
  use_torch_threads();
  const Shape z = shape_of(u, A2, C, T);
  check_inputs({&gy, &u, &d, &A2, &Bm, &C, &Hs}, u);
  if (Dsk) check_inputs({&*Dsk}, u);
  auto gu = at::empty_like(u), gd = at::empty_like(d);
  auto gAp = at::empty({z.Bt, z.nEb, z.N + 1, V}, u.options());
  auto gBp = at::empty({z.nEb, z.Bt, z.L, z.N}, u.options());  // every (t, n) is written
  auto gCp = at::zeros({z.nEb, z.Bt, z.Q, z.N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_read_bwd", [&] {
    const Opts o{softplus, Dsk ? Dsk->data_ptr<scalar_t>() : nullptr};
    backward_kernel<scalar_t>(z, o, gy.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(),
                              A2.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                              rs.data_ptr<int64_t>(), rq.data_ptr<int64_t>(), Hs.data_ptr<scalar_t>(),
                              gu.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), gAp.data_ptr<scalar_t>(),
                              gBp.data_ptr<scalar_t>(), gCp.data_ptr<scalar_t>());
  });
  auto gAD = lane_sums(gAp, z.E);  // gA (N, E), then gD
  return {gu, gd, gAD.narrow(0, 0, z.N).clone(at::MemoryFormat::Contiguous), block_sum(gBp), block_sum(gCp),
          gAD[z.N].clone()};
}


// The options of a scan with the conv inside: x (rows and batches at its strides), wt (K, E), bias
template <typename S>
Opts conv_opts(bool softplus, const c10::optional<at::Tensor>& Dsk, const at::Tensor& x, const at::Tensor& wt,
               const at::Tensor& bias) {
  Opts o{softplus, Dsk ? Dsk->data_ptr<S>() : nullptr};
  o.x = x.data_ptr<S>();
  o.wt = wt.data_ptr<S>();
  o.cb = bias.data_ptr<S>();
  o.K = wt.size(0);
  o.xb = x.stride(0);
  o.xs = x.stride(1);
  return o;
}

// The scan of scan_read_fwd with u = silu(causal_conv(x, w, bias)) computed inside (x (Bt, L, E),
// w (E, K), bias (E,)): the conv's output is never stored.
at::Tensor conv_scan_read_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& d,
                              const at::Tensor& A2, const at::Tensor& Bm, const at::Tensor& C, const at::Tensor& rs,
                              const at::Tensor& rq, int64_t T, at::Tensor& Hs, bool softplus,
                              const c10::optional<at::Tensor>& Dsk) {
  use_torch_threads();
  const Shape z = shape_of(x, A2, C, T);
  check_rows(x);
  check_inputs({&w, &bias, &d, &A2, &Bm, &C, &Hs}, d);
  TORCH_CHECK(x.scalar_type() == d.scalar_type(), "canvas_mamba_cpu: x must have the other tensors' dtype");
  if (Dsk) check_inputs({&*Dsk}, d);
  TORCH_CHECK(w.size(1) >= 1 && w.size(1) <= MAX_K, "canvas_mamba_cpu: conv width ", w.size(1), " outside 1..", MAX_K);
  TORCH_CHECK(Hs.numel() >= z.Bt * z.nC * z.N * z.E, "canvas_mamba_cpu: state buffer too small");
  auto y = at::zeros({z.Bt, z.Q, z.E}, x.options());
  auto wt = w.t().contiguous();
  auto rsc = rs.contiguous(), rqc = rq.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_scan_read_fwd", [&] {
    const Opts o = conv_opts<scalar_t>(softplus, Dsk, x, wt, bias);
    forward_kernel<scalar_t>(z, o, nullptr, d.data_ptr<scalar_t>(), A2.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(),
                             C.data_ptr<scalar_t>(), rsc.data_ptr<int64_t>(), rqc.data_ptr<int64_t>(),
                             y.data_ptr<scalar_t>(), Hs.data_ptr<scalar_t>());
  });
  return y;
}

// Its adjoint: [gx, gw (E, K), gbias (E,), gd, gA (N, E), gB, gC, gD].
std::vector<at::Tensor> conv_scan_read_bwd(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& bias, const at::Tensor& d, const at::Tensor& A2,
                                           const at::Tensor& Bm, const at::Tensor& C, const at::Tensor& rs,
                                           const at::Tensor& rq, const at::Tensor& Hs, int64_t T, bool softplus,
                                           const c10::optional<at::Tensor>& Dsk) {
  use_torch_threads();
  const Shape z = shape_of(x, A2, C, T);
  check_rows(x);
  check_inputs({&gy, &w, &bias, &d, &A2, &Bm, &C, &Hs}, d);
  TORCH_CHECK(x.scalar_type() == d.scalar_type(), "canvas_mamba_cpu: x must have the other tensors' dtype");
  if (Dsk) check_inputs({&*Dsk}, d);
  TORCH_CHECK(w.size(1) >= 1 && w.size(1) <= MAX_K, "canvas_mamba_cpu: conv width ", w.size(1), " outside 1..", MAX_K);
  const int64_t K = w.size(1);
  auto gx = at::empty({z.Bt, z.L, z.E}, x.options()), gd = at::empty_like(d);
  auto gAp = at::empty({z.Bt, z.nEb, z.N + 1, V}, x.options());
  auto gWp = at::empty({z.Bt, z.nEb, K + 1, V}, x.options());
  auto gBp = at::empty({z.nEb, z.Bt, z.L, z.N}, x.options());
  auto gCp = at::zeros({z.nEb, z.Bt, z.Q, z.N}, x.options());
  auto wt = w.t().contiguous();
  auto rsc = rs.contiguous(), rqc = rq.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_scan_read_bwd", [&] {
    const Opts o = conv_opts<scalar_t>(softplus, Dsk, x, wt, bias);
    backward_kernel<scalar_t>(z, o, gy.data_ptr<scalar_t>(), nullptr, d.data_ptr<scalar_t>(),
                              A2.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                              rsc.data_ptr<int64_t>(), rqc.data_ptr<int64_t>(), Hs.data_ptr<scalar_t>(),
                              gx.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), gAp.data_ptr<scalar_t>(),
                              gBp.data_ptr<scalar_t>(), gCp.data_ptr<scalar_t>(), gWp.data_ptr<scalar_t>());
  });
  auto gAD = lane_sums(gAp, z.E);  // gA (N, E), then gD
  auto [gw, gb] = conv_grads(gWp, K, z.E);
  return {gx, gw, gb, gd, gAD.narrow(0, 0, z.N).clone(at::MemoryFormat::Contiguous), block_sum(gBp),
          block_sum(gCp), gAD[z.N].clone()};
}

}  // namespace

TORCH_LIBRARY(canvas_mamba_cpu, m) {
  m.def("scan_read_fwd(Tensor u, Tensor d, Tensor A2, Tensor Bm, Tensor C, Tensor rs, Tensor rq, int T, "
        "Tensor(a!) Hs, bool softplus, Tensor? Dsk) -> Tensor");
  m.def("scan_read_bwd(Tensor gy, Tensor u, Tensor d, Tensor A2, Tensor Bm, Tensor C, Tensor rs, Tensor rq, "
        "Tensor Hs, int T, bool softplus, Tensor? Dsk) -> Tensor[]");
  m.def("conv_silu_fwd(Tensor x, Tensor w, Tensor bias) -> Tensor");
  m.def("conv_silu_bwd(Tensor gu, Tensor x, Tensor w, Tensor bias) -> Tensor[]");
  m.def("conv_scan_read_fwd(Tensor x, Tensor w, Tensor bias, Tensor d, Tensor A2, Tensor Bm, Tensor C, Tensor rs, "
        "Tensor rq, int T, Tensor(a!) Hs, bool softplus, Tensor? Dsk) -> Tensor");
  m.def("conv_scan_read_bwd(Tensor gy, Tensor x, Tensor w, Tensor bias, Tensor d, Tensor A2, Tensor Bm, Tensor C, "
        "Tensor rs, Tensor rq, Tensor Hs, int T, bool softplus, Tensor? Dsk) -> Tensor[]");
  m.impl("conv_scan_read_fwd", c10::DispatchKey::CPU, &conv_scan_read_fwd);
  m.impl("conv_scan_read_bwd", c10::DispatchKey::CPU, &conv_scan_read_bwd);
  m.impl("scan_read_fwd", c10::DispatchKey::CPU, &scan_read_fwd);
  m.impl("conv_silu_fwd", c10::DispatchKey::CPU, &conv_silu_fwd);
  m.impl("conv_silu_bwd", c10::DispatchKey::CPU, &conv_silu_bwd);
  m.impl("scan_read_bwd", c10::DispatchKey::CPU, &scan_read_bwd);
}
