// DIN's activation unit scoring C candidates against one user's history, fused, for serving on CPU.
//
// scores[c, l] = MLP(act(A[l] + B[c] + (e_l ⊙ v_c) · W_prod)) with the target-independent term A and the
// position-independent term B computed by the caller (see ActivationUnit.score_targets). The torch version
// writes every layer's [C·L, H] activations to memory and reads them back (L=1000, C=100, H=80: 32 MB per
// layer), so it runs at memory speed. Here each thread takes a (candidate, block of positions) tile at a
// time and carries it through every layer in buffers that stay in L1/L2:
//
//   layer 1: h = E_block · M_c + A_block + B_c, with M_c = diag(v_c) · W_prod^T precomputed per candidate
//   layer k: h = act(h) · W_k^T + b_k
//   output : score = act(h) · w_out + b_out
//
// Widths are padded to multiples of 8 with zero weights (a padded column's activation meets a zero weight
// row in the next layer). The inner products run on whole 16-float vectors plus, for a width of 16k + 8
// (the paper's 40), one 8-float vector, instead of padding 40 to 48. GCC vector extensions,
// which compile to AVX-512, AVX2, SSE or NEON, whatever -march=native offers. The sigmoid uses a Cephes
// polynomial exp (relative error ~1e-7), so scores agree with torch's to ~1e-6, not bit for bit.
// Forward only, float32, eval mode (Dice with its running statistics). Plain C ABI, no torch headers:
// built by g++ in a second or two and called through ctypes (longrec/kernels/din_attention.py).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef int32_t v8i __attribute__((vector_size(32)));

template <class V> struct IntVector;
template <> struct IntVector<v16> { typedef v16i type; };
template <> struct IntVector<v8> { typedef v8i type; };

constexpr int64_t kLanes = 16;
constexpr int64_t kHalf = 8;
constexpr int64_t kRows = 4;        // rows of a register block
constexpr int64_t kMaxPanel = 6;    // vectors of output columns per register block (4 x 6 accumulators)
constexpr int64_t kBlockRows = 64;  // positions per tile: its activations stay in L1/L2

enum Activation : int64_t { kDice = 0, kPrelu = 1, kSigmoid = 2 };

template <class V> inline V splat(float x) { return V{} + x; }

template <class V> inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V> inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }

// f(V{}, col) for each whole 16-float vector of columns [0, width), then for the 8-float tail if any.
template <class F> inline void for_each_vector(int64_t width, F f) {
  int64_t col = 0;
  for (; col + kLanes <= width; col += kLanes) f(v16{}, col);
  if (col < width) f(v8{}, col);
}

// exp(x) for float lanes: Cephes expf's polynomial on x - n·ln2 with n = round(x·log2 e), rounded by
// adding and taking away 1.5·2^23, and 2^n built in the exponent bits. Clamped to ±87, so 2^n stays a
// normal float. (Fewer operations than Cephes' floor by conversions; Dice runs it on every activation.)
template <class V> inline V vexp(V x) {
  typedef typename IntVector<V>::type VI;
  x = x < splat<V>(87.0f) ? x : splat<V>(87.0f);
  x = x > splat<V>(-87.0f) ? x : splat<V>(-87.0f);
  const V magic = splat<V>(12582912.0f);
  V n = (x * splat<V>(1.44269504088896341f) + magic) - magic;
  x = x - n * splat<V>(0.693359375f) - n * splat<V>(-2.12194440e-4f);
  V y = splat<V>(1.9875691500e-4f);
  y = y * x + splat<V>(1.3981999507e-3f);
  y = y * x + splat<V>(8.3334519073e-3f);
  y = y * x + splat<V>(4.1665795894e-2f);
  y = y * x + splat<V>(1.6666665459e-1f);
  y = y * x + splat<V>(5.0000001201e-1f);
  y = y * x * x + x + splat<V>(1.0f);
  VI exponent = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return y * scale;
}

template <class V> inline V vsigmoid(V x) { return splat<V>(1.0f) / (splat<V>(1.0f) + vexp(-x)); }

// One activation's per-column parameters, padded. Dice's come folded from (mean, 1/sqrt(var + eps), α):
// -z = x·neg_scale + neg_shift (z the normalised input) and out = x·(α + p·(1 - α)) with p = sigmoid(z),
// which is torch.lerp(x·α, x, p) in two operations instead of three. PReLU uses α alone.
struct ActivationParams {
  int64_t kind;
  const float* neg_scale;
  const float* neg_shift;
  const float* alpha;
  const float* one_minus_alpha;
};

template <class V> inline V activate(V x, const ActivationParams& act, int64_t col) {
  if (act.kind == kDice) {
    V e = vexp(x * load<V>(act.neg_scale + col) + load<V>(act.neg_shift + col));
    V p = splat<V>(1.0f) / (splat<V>(1.0f) + e);
    return x * (p * load<V>(act.one_minus_alpha + col) + load<V>(act.alpha + col));
  }
  if (act.kind == kPrelu) {
    V ax = x * load<V>(act.alpha + col);
    return x >= splat<V>(0.0f) ? x : ax;
  }
  return vsigmoid(x);
}

// out[r, :] += in[r, :K] · W[:K, :] for `rows` rows (a multiple of kRows) over J 16-float column vectors
// and H (0 or 1) 8-float ones after them; W row stride `ldw`, out row stride `ldo`.
template <int J, int H>
void gemm_panel(const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W, int64_t ldw,
                float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; r += kRows) {
    v16 acc[kRows][J + 1];  // J + 1: no zero-length array when the panel is the 8-float tail alone
    v8 tail[kRows];
    for (int64_t i = 0; i < kRows; ++i) {
      for (int j = 0; j < J; ++j) acc[i][j] = load<v16>(out + (r + i) * ldo + j * kLanes);
      if (H) tail[i] = load<v8>(out + (r + i) * ldo + J * kLanes);
    }
    for (int64_t k = 0; k < K; ++k) {
      v16 w[J + 1];
      for (int j = 0; j < J; ++j) w[j] = load<v16>(W + k * ldw + j * kLanes);
      v8 w_tail = H ? load<v8>(W + k * ldw + J * kLanes) : v8{};
      for (int64_t i = 0; i < kRows; ++i) {
        const float x = in[(r + i) * ldi + k];
        for (int j = 0; j < J; ++j) acc[i][j] += splat<v16>(x) * w[j];
        if (H) tail[i] += splat<v8>(x) * w_tail;
      }
    }
    for (int64_t i = 0; i < kRows; ++i) {
      for (int j = 0; j < J; ++j) store(out + (r + i) * ldo + j * kLanes, acc[i][j]);
      if (H) store(out + (r + i) * ldo + J * kLanes, tail[i]);
    }
  }
}

template <int H>
void gemm_panel_of(int64_t vectors, const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W,
                   int64_t ldw, float* out, int64_t ldo) {
  switch (vectors) {
    case 0: gemm_panel<0, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
    case 1: gemm_panel<1, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
    case 2: gemm_panel<2, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
    case 3: gemm_panel<3, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
    case 4: gemm_panel<4, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
    default: gemm_panel<5, H>(in, ldi, rows, K, W, ldw, out, ldo); break;
  }
}

// out[:rows, :width] += in · W, width a multiple of 8: panels of up to 6 16-float vectors; an 8-float tail
// joins the last panel when that has at most 5 (4 x 6 + 4 x 1 accumulators would not fit in registers).
void gemm_accumulate(const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W, int64_t width,
                     float* out) {
  for (int64_t col = 0; col < width;) {
    const int64_t vectors = std::min<int64_t>(kMaxPanel, (width - col) / kLanes);
    const bool tail = vectors < kMaxPanel && col + vectors * kLanes < width;
    if (vectors == kMaxPanel)
      gemm_panel<kMaxPanel, 0>(in, ldi, rows, K, W + col, width, out + col, width);
    else if (tail)
      gemm_panel_of<1>(vectors, in, ldi, rows, K, W + col, width, out + col, width);
    else
      gemm_panel_of<0>(vectors, in, ldi, rows, K, W + col, width, out + col, width);
    col += vectors * kLanes + (tail ? kHalf : 0);
  }
}

void activate_rows(float* h, int64_t rows, int64_t width, const ActivationParams& act) {
  for (int64_t r = 0; r < rows; ++r)
    for_each_vector(width, [&](auto tag, int64_t col) {
      typedef decltype(tag) V;
      store(h + r * width + col, activate(load<V>(h + r * width + col), act, col));
    });
}

}  // namespace

// history [L, d] and history_term [L, H1]: L a multiple of 4. target [C, d], target_term [C, H1]. widths[k]
// (k = 0..n_layers-1): layer k's output width, a multiple of 8 (zero padded by the caller); w_prod_t
// [d, H1]; weights_t[k] [widths[k-1], widths[k]] and biases[k] for k >= 1; act_params[k] [3, widths[k]]
// (mean, inv_std, alpha) for the activation after layer k. w_out [widths[last]], b_out. per_candidate:
// scratch of C * d * H1 floats. Writes scores [C, L]. Runs on `threads` OpenMP threads.
extern "C" void din_attention_scores(const float* history, const float* history_term, const float* target,
                                     const float* target_term, const float* w_prod_t,
                                     const float* const* weights_t, const float* const* biases,
                                     const float* const* act_params, const int64_t* widths, int64_t n_layers,
                                     int64_t activation, const float* w_out, float b_out, int64_t L,
                                     int64_t d, int64_t C, float* per_candidate, float* scores,
                                     int64_t threads) {
  const int64_t H1 = widths[0];
  int64_t widest = 0;
  for (int64_t k = 0; k < n_layers; ++k) widest = std::max(widest, widths[k]);
  // Per layer: neg_scale, neg_shift, alpha, 1 - alpha (Dice's folded form, see ActivationParams).
  std::vector<std::vector<float>> folded(n_layers);
  std::vector<ActivationParams> acts;
  for (int64_t k = 0; k < n_layers; ++k) {
    const int64_t w = widths[k];
    const float *mean = act_params[k], *inv_std = act_params[k] + w, *alpha = act_params[k] + 2 * w;
    folded[k].resize(4 * w);
    for (int64_t i = 0; i < w; ++i) {
      folded[k][i] = -inv_std[i];
      folded[k][w + i] = mean[i] * inv_std[i];
      folded[k][2 * w + i] = alpha[i];
      folded[k][3 * w + i] = 1.0f - alpha[i];
    }
    const float* f = folded[k].data();
    acts.push_back({activation, f, f + w, f + 2 * w, f + 3 * w});
  }
  const int64_t blocks = (L + kBlockRows - 1) / kBlockRows;

#pragma omp parallel num_threads(threads)
  {
    // M_c = diag(v_c) · W_prod^T for every candidate: [C, d, H1].
#pragma omp for schedule(dynamic, 8)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < d; ++k)
        for_each_vector(H1, [&](auto tag, int64_t col) {
          typedef decltype(tag) V;
          store(per_candidate + (c * d + k) * H1 + col, load<V>(w_prod_t + k * H1 + col) * target[c * d + k]);
        });

    std::vector<float> buffer_a(kBlockRows * widest), buffer_b(kBlockRows * widest);
    // Dynamic: on 2 cores shared with the HTTP server, a thread the OS preempts would otherwise hold up
    // half the tiles while the other waits at the barrier.
#pragma omp for schedule(dynamic, 4)
    for (int64_t tile = 0; tile < C * blocks; ++tile) {
      const int64_t c = tile / blocks, l0 = (tile % blocks) * kBlockRows;
      const int64_t rows = std::min(kBlockRows, L - l0);
      float* h = buffer_a.data();
      float* next = buffer_b.data();
      // Layer 1 starts from A[l] + B[c] and adds E_block · M_c.
      const float* A = history_term + l0 * H1;
      const float* B = target_term + c * H1;
      for (int64_t r = 0; r < rows; ++r)
        for_each_vector(H1, [&](auto tag, int64_t col) {
          typedef decltype(tag) V;
          store(h + r * H1 + col, load<V>(A + r * H1 + col) + load<V>(B + col));
        });
      gemm_accumulate(history + l0 * d, d, rows, d, per_candidate + c * d * H1, H1, h);
      activate_rows(h, rows, H1, acts[0]);
      for (int64_t k = 1; k < n_layers; ++k) {
        const int64_t in_width = widths[k - 1], out_width = widths[k];
        for (int64_t r = 0; r < rows; ++r)
          for_each_vector(out_width, [&](auto tag, int64_t col) {
            typedef decltype(tag) V;
            store(next + r * out_width + col, load<V>(biases[k] + col));
          });
        gemm_accumulate(h, in_width, rows, in_width, weights_t[k], out_width, next);
        activate_rows(next, rows, out_width, acts[k]);
        std::swap(h, next);
      }
      const int64_t last = widths[n_layers - 1];
      float* out = scores + c * L + l0;
      for (int64_t r = 0; r < rows; ++r) {
        v16 acc{};
        v8 acc_tail{};
        int64_t col = 0;
        for (; col + kLanes <= last; col += kLanes) acc += load<v16>(h + r * last + col) * load<v16>(w_out + col);
        if (col < last) acc_tail = load<v8>(h + r * last + col) * load<v8>(w_out + col);
        float total = 0.0f;
        for (int64_t i = 0; i < kLanes; ++i) total += acc[i];
        for (int64_t i = 0; i < kHalf; ++i) total += acc_tail[i];
        out[r] = total + b_out;
      }
    }
  }
}
