// One query row per sequence over its paged K/V, read in place from the pool (CPU).
//
// The decode attention of the `torch` backend (flowprefill/attention/torch_backend.py) as
// one pass over each sequence's cached rows: no gathered copy, no fp32 copy of the context,
// the scores and the weighted sum of V in fp32, bf16 converted to fp32 as it is read.
// Parallel over (sequence, KV head) with OpenMP; the process's OpenMP runtime is the one
// PyTorch already loaded (same soname), so this shares PyTorch's thread pool.
//
// Built and loaded by flowprefill/attention/cpu_kernel.py (plain C ABI, called via ctypes).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;    // partial sums per dot product (one AVX-512 register of floats)
constexpr int kMaxHead = 256;  // head_dim bound (checked by the caller)
constexpr int kAhead = 16;     // rows requested ahead of use: the slots are scattered

template <typename T>
inline void prefetch(const T* p, int64_t n) {
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(p) + b);
}

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {  // bf16 -> fp32: the high half of the fp32 bits
  uint32_t w = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}

inline void store(float* p, float x) { *p = x; }
inline void store(uint16_t* p, float x) {  // fp32 -> bf16, round to nearest even
  uint32_t w;
  std::memcpy(&w, &x, sizeof w);
  w += 0x7FFFu + ((w >> 16) & 1u);
  *p = static_cast<uint16_t>(w >> 16);
}

// q, out: [B, nh, hd]; k, v: one layer's slots [S, kvh, hd]; slots: [B, lmax] (row b's
// positions 0 .. lens[b] - 1 are slots[b, :lens[b]]). Returns 0, or 1 (nothing computed)
// when a length is outside 1 .. lmax or a slot outside 0 .. S - 1.
template <typename T>
int attend(const T* q, const T* k, const T* v, const int64_t* slots, const int64_t* lens,
           T* out, int64_t batch, int64_t lmax, int64_t num_slots, int64_t nh, int64_t kvh,
           int64_t hd, float scale, int threads) {
  for (int64_t b = 0; b < batch; ++b) {
    if (lens[b] < 1 || lens[b] > lmax) return 1;
    for (int64_t l = 0; l < lens[b]; ++l)
      if (slots[b * lmax + l] < 0 || slots[b * lmax + l] >= num_slots) return 1;
  }
  const int64_t g = nh / kvh;  // query heads per KV head
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> qf(g * hd), acc(g * hd), scores(g * lmax), inv(g);
    float row[kMaxHead];
#pragma omp for schedule(static)
    for (int64_t item = 0; item < batch * kvh; ++item) {
      const int64_t b = item / kvh, h = item % kvh, len = lens[b];
      const int64_t* sl = slots + b * lmax;
      for (int64_t j = 0; j < g; ++j)
        for (int64_t d = 0; d < hd; ++d)
          qf[j * hd + d] = to_float(q[(b * nh + h * g + j) * hd + d]) * scale;
      for (int64_t l = 0; l < len; ++l) {  // scores = q . k
        const T* kr = k + (sl[l] * kvh + h) * hd;
        if (l + kAhead < len) prefetch(k + (sl[l + kAhead] * kvh + h) * hd, hd);
        for (int64_t d = 0; d < hd; ++d) row[d] = to_float(kr[d]);
        for (int64_t j = 0; j < g; ++j) {
          const float* qj = qf.data() + j * hd;
          float part[kLanes] = {0};
          for (int64_t d0 = 0; d0 < hd; d0 += kLanes)
            for (int i = 0; i < kLanes; ++i) part[i] += qj[d0 + i] * row[d0 + i];
          float s = 0;
          for (int i = 0; i < kLanes; ++i) s += part[i];
          scores[j * lmax + l] = s;
        }
      }
      for (int64_t j = 0; j < g; ++j) {  // softmax, its normalization deferred
        float* sj = scores.data() + j * lmax;
        float m = sj[0];
        for (int64_t l = 1; l < len; ++l) m = sj[l] > m ? sj[l] : m;
        float sum = 0;
        for (int64_t l = 0; l < len; ++l) {
          sj[l] = std::exp(sj[l] - m);
          sum += sj[l];
        }
        inv[j] = 1.0f / sum;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t l = 0; l < len; ++l) {  // out = p . v
        const T* vr = v + (sl[l] * kvh + h) * hd;
        if (l + kAhead < len) prefetch(v + (sl[l + kAhead] * kvh + h) * hd, hd);
        for (int64_t d = 0; d < hd; ++d) row[d] = to_float(vr[d]);
        for (int64_t j = 0; j < g; ++j) {
          const float p = scores[j * lmax + l];
          float* a = acc.data() + j * hd;
          for (int64_t d = 0; d < hd; ++d) a[d] += p * row[d];
        }
      }
      for (int64_t j = 0; j < g; ++j)
        for (int64_t d = 0; d < hd; ++d)
          store(out + (b * nh + h * g + j) * hd + d, acc[j * hd + d] * inv[j]);
    }
  }
  return 0;
}

}  // namespace

extern "C" {

int fp_paged_abi() { return 2; }

int fp_paged_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, const int64_t* slots,
                  const int64_t* lens, uint16_t* out, int64_t batch, int64_t lmax,
                  int64_t num_slots, int64_t nh, int64_t kvh, int64_t hd, float scale,
                  int threads) {
  return attend(q, k, v, slots, lens, out, batch, lmax, num_slots, nh, kvh, hd, scale, threads);
}

int fp_paged_f32(const float* q, const float* k, const float* v, const int64_t* slots,
                 const int64_t* lens, float* out, int64_t batch, int64_t lmax, int64_t num_slots,
                 int64_t nh, int64_t kvh, int64_t hd, float scale, int threads) {
  return attend(q, k, v, slots, lens, out, batch, lmax, num_slots, nh, kvh, hd, scale, threads);
}

}  // extern "C"
