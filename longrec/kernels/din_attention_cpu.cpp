// DIN's activation unit scoring C candidates against one user's history, fused, for serving on CPU.
//
// scores[c, l] = MLP(act(A[l] + B[c] + (e_l ⊙ v_c) · W_prod)) with the target-independent term A and the
// position-independent term B computed by the caller (see ActivationUnit.score_targets). The torch version
// writes every layer's [C·L, H] activations to memory and reads them back (L=1000, C=100, H=80: 32 MB per
// layer), so it runs at memory speed. Here each thread takes a (candidate, block of 64 positions) tile at a
// time and carries it through every layer in buffers that stay in L1/L2:
//
//   layer 1: h = E_block · M_c + A_block + B_c, with M_c = diag(v_c) · W_prod^T precomputed per candidate
//   layer k: h = act(h) · W_k^T + b_k
//   output : score = act(h) · w_out + b_out
//
// Positions are in vector lanes: a tile's activations are stored transposed, h[column][position], so one
// vector holds 16 positions of a column and every weight is a scalar broadcast (from memory, a load-port
// op). A register block is 32 positions × 12 columns (24 accumulators; 16 positions for a history's last
// 16); each output sums its k terms in order from its initial value, and each layer's bias, activation
// and (last layer) output weights are applied in registers. The output layer is plain vector FMAs over
// positions, with no horizontal sums. (The layout before, positions in rows and columns in lanes,
// broadcast each row's input from a register, which took an FMA port per row and k, and ended each
// score in a horizontal sum; benchmarks/din_kernel_revisions.py times the two.) Any width and any L: the
// kernel pads positions to a multiple of 16 with zeros itself and writes only the L real scores.
// GCC vector extensions, which compile to AVX-512, AVX2, SSE or NEON, whatever -march=native offers. The
// sigmoid uses a Cephes polynomial exp (relative error ~1e-7), so scores agree with torch's to ~1e-6,
// not bit for bit.
// Forward only, float32, eval mode (Dice with its running statistics). Plain C ABI, no torch headers:
// built by g++ in a second or two and called through ctypes (longrec/kernels/din_attention.py).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

template <class V> struct IntVector;
template <> struct IntVector<v16> { typedef v16i type; };

constexpr int64_t kLanes = 16;
constexpr int64_t kPanelRows = 2 * kLanes;  // positions of a register block
constexpr int64_t kPanelColumns = 12;       // its columns: 24 accumulators + 3 of 32 vector registers
constexpr int64_t kBlockRows = 64;          // positions per tile: its activations stay in L1/L2

enum Activation : int64_t { kDice = 0, kPrelu = 1, kSigmoid = 2 };

// x - 0 is x for every float (also -0), so the compiler may broadcast straight from memory; V{} + x is
// not (-0 + 0 = +0), and costs an add and a register broadcast on the FMA ports per use.
template <class V> inline V splat(float x) { return x - V{}; }

template <class V> inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V> inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(v)); }

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

// One activation's per-column parameters. Dice's come folded from (mean, 1/sqrt(var + eps), α):
// -z = x·neg_scale + neg_shift (z the normalised input) and out = x·(α + p·(1 - α)) with p = sigmoid(z),
// which is torch.lerp(x·α, x, p) in two operations instead of three. PReLU uses α alone.
struct ActivationParams {
  int64_t kind;
  const float* neg_scale;
  const float* neg_shift;
  const float* alpha;
  const float* one_minus_alpha;
};

// The activation after a layer, on one vector of column n's positions: its parameters are broadcasts.
inline v16 activate(v16 x, const ActivationParams& act, int64_t n) {
  if (act.kind == kDice) {
    const v16 p = splat<v16>(1.0f) /
                  (splat<v16>(1.0f) + vexp(x * splat<v16>(act.neg_scale[n]) + splat<v16>(act.neg_shift[n])));
    return x * (p * splat<v16>(act.one_minus_alpha[n]) + splat<v16>(act.alpha[n]));
  }
  if (act.kind == kPrelu) return x >= splat<v16>(0.0f) ? x : x * splat<v16>(act.alpha[n]);
  return vsigmoid(x);
}

// What a layer adds around its GEMM: each output column starts from a bias (bias[n]) plus, for the first
// layer, the history term of its positions (init[n][·], row stride ld_init; null for the others), and
// the last layer's activations go straight into the scores (score[·] += act · w_out[n]) instead of memory.
struct LayerEnds {
  const float* init;
  int64_t ld_init;
  const float* bias;
  const ActivationParams* act;
  const float* w_out;  // null but for the last layer
  float* score;
};

// Columns col0 .. col0 + N - 1 (N ≤ 12) of a layer for 16·R positions (R = 2, or 1 for a history's last
// 16): R × N accumulators, R vector loads and N broadcasts per k, the activation applied in registers.
// in: transposed input [K][ldi]; W [K][ldw]; out: transposed output [width][ldo] (unused for the last layer).
template <int N, int R>
void panel(const float* in, int64_t ldi, int64_t K, const float* W, int64_t ldw, float* out, int64_t ldo,
           const LayerEnds& ends, int64_t col0) {
  v16 acc[N][R];
  for (int n = 0; n < N; ++n)
    for (int v = 0; v < R; ++v) {
      acc[n][v] = splat<v16>(ends.bias[col0 + n]);
      if (ends.init) acc[n][v] = load<v16>(ends.init + (col0 + n) * ends.ld_init + v * kLanes) + acc[n][v];
    }
  for (int64_t k = 0; k < K; ++k) {
    v16 x[R];
    for (int v = 0; v < R; ++v) x[v] = load<v16>(in + k * ldi + v * kLanes);
    for (int n = 0; n < N; ++n) {
      const v16 w = splat<v16>(W[k * ldw + n]);
      for (int v = 0; v < R; ++v) acc[n][v] += x[v] * w;
    }
  }
  if (ends.w_out) {
    for (int v = 0; v < R; ++v) {
      v16 score = load<v16>(ends.score + v * kLanes);
      for (int n = 0; n < N; ++n)
        score += activate(acc[n][v], *ends.act, col0 + n) * splat<v16>(ends.w_out[col0 + n]);
      store(ends.score + v * kLanes, score);
    }
    return;
  }
  for (int n = 0; n < N; ++n)
    for (int v = 0; v < R; ++v) store(out + n * ldo + v * kLanes, activate(acc[n][v], *ends.act, col0 + n));
}

template <int R>
void panel_of(int64_t columns, const float* in, int64_t ldi, int64_t K, const float* W, int64_t ldw,
              float* out, int64_t ldo, const LayerEnds& ends, int64_t col0) {
  switch (columns) {
    case 1: panel<1, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 2: panel<2, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 3: panel<3, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 4: panel<4, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 5: panel<5, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 6: panel<6, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 7: panel<7, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 8: panel<8, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 9: panel<9, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 10: panel<10, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    case 11: panel<11, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
    default: panel<kPanelColumns, R>(in, ldi, K, W, ldw, out, ldo, ends, col0); break;
  }
}

// One layer on a tile of `rows` positions (a multiple of 16), panel by panel: see LayerEnds.
void layer_transposed(const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W, int64_t width,
                      float* out, int64_t ldo, const LayerEnds& ends) {
  for (int64_t r = 0; r < rows; r += kPanelRows) {
    LayerEnds at = ends;
    if (at.init) at.init += r;
    if (at.score) at.score += r;
    for (int64_t n = 0; n < width; n += kPanelColumns) {
      const int64_t columns = std::min(kPanelColumns, width - n);
      if (rows - r >= kPanelRows)
        panel_of<2>(columns, in + r, ldi, K, W + n, width, out + n * ldo + r, ldo, at, n);
      else
        panel_of<1>(columns, in + r, ldi, K, W + n, width, out + n * ldo + r, ldo, at, n);
    }
  }
}

}  // namespace

namespace {

// Both entry points below. history_term may be null (no A term); target and w_prod_t null: per_candidate
// already holds the caller's M_c.
void attention_scores(const float* history, const float* history_term, const float* target,
                      const float* target_term, const float* w_prod_t, const float* const* weights_t,
                      const float* const* biases, const float* const* act_params, const int64_t* widths,
                      int64_t n_layers, int64_t activation, const float* w_out, float b_out, int64_t L,
                      int64_t d, int64_t C, float* per_candidate, float* scores, int64_t threads) {
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
  // Positions padded to whole vectors; the history and its term transposed ([d][Lp], [H1][Lp]), zero padded.
  const int64_t Lp = (L + kLanes - 1) / kLanes * kLanes;
  const int64_t blocks = (Lp + kBlockRows - 1) / kBlockRows;
  std::vector<float> history_t(d * Lp, 0.0f), term_t(history_term ? H1 * Lp : 0, 0.0f);

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t k = 0; k < d; ++k) history_t[k * Lp + l] = history[l * d + k];
      if (history_term)
        for (int64_t n = 0; n < H1; ++n) term_t[n * Lp + l] = history_term[l * H1 + n];
    }
    if (target) {
      // M_c = diag(v_c) · W_prod^T for every candidate: [C, d, H1]. (This loop's barrier covers both.)
#pragma omp for schedule(dynamic, 8)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < d; ++k)
          for (int64_t n = 0; n < H1; ++n)
            per_candidate[(c * d + k) * H1 + n] = w_prod_t[k * H1 + n] * target[c * d + k];
    } else {
#pragma omp barrier
    }

    std::vector<float> buffer_a(kBlockRows * widest), buffer_b(kBlockRows * widest);
    // Dynamic: on 2 cores shared with the HTTP server, a thread the OS preempts would otherwise hold up
    // half the tiles while the other waits at the barrier.
#pragma omp for schedule(dynamic, 4)
    for (int64_t tile = 0; tile < C * blocks; ++tile) {
      const int64_t c = tile / blocks, l0 = (tile % blocks) * kBlockRows;
      const int64_t rows = std::min(kBlockRows, Lp - l0);
      float* h = buffer_a.data();
      float* next = buffer_b.data();
      alignas(64) float block[kBlockRows];
      for (int64_t r = 0; r < rows; ++r) block[r] = b_out;
      // Layer 1 starts from A[l] + B[c] and adds M_c^T · E_block.
      LayerEnds ends{history_term ? term_t.data() + l0 : nullptr, Lp, target_term + c * H1, &acts[0], nullptr,
                     nullptr};
      if (n_layers == 1) ends.w_out = w_out, ends.score = block;
      layer_transposed(history_t.data() + l0, Lp, rows, d, per_candidate + c * d * H1, H1, h, kBlockRows,
                       ends);
      for (int64_t k = 1; k < n_layers; ++k) {
        const bool last = k == n_layers - 1;
        const LayerEnds layer{
            nullptr, 0, biases[k], &acts[k], last ? w_out : nullptr, last ? block : nullptr};
        layer_transposed(h, kBlockRows, rows, widths[k - 1], weights_t[k], widths[k], next, kBlockRows,
                         layer);
        std::swap(h, next);
      }
      std::memcpy(scores + c * L + l0, block, std::min(kBlockRows, L - l0) * sizeof(float));
    }
  }
}

}  // namespace

// DIN: history [L, d] and history_term [L, H1]. target [C, d], target_term [C, H1]. widths[k]
// (k = 0..n_layers-1): layer k's output width; w_prod_t
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
  attention_scores(history, history_term, target, target_term, w_prod_t, weights_t, biases, act_params,
                   widths, n_layers, activation, w_out, b_out, L, d, C, per_candidate, scores, threads);
}

// The same unit with each candidate's first-layer matrix given: per_candidate [C, d, H1] (M_c, the first
// layer's weights on e_l for candidate c) and target_term [C, H1] its bias, no history term. IMN's
// multi-way attention is this: W·[e − m; e − v; e ⊙ m; e ⊙ v] = M_c·e − A·m_c − B·v_c + b.
extern "C" void attention_unit_scores(const float* history, const float* per_candidate,
                                      const float* target_term, const float* const* weights_t,
                                      const float* const* biases, const float* const* act_params,
                                      const int64_t* widths, int64_t n_layers, int64_t activation,
                                      const float* w_out, float b_out, int64_t L, int64_t d, int64_t C,
                                      float* scores, int64_t threads) {
  // Without a target the implementation only reads per_candidate.
  float* matrices = const_cast<float*>(per_candidate);
  attention_scores(history, nullptr, nullptr, target_term, nullptr, weights_t, biases, act_params, widths,
                   n_layers, activation, w_out, b_out, L, d, C, matrices, scores, threads);
}
