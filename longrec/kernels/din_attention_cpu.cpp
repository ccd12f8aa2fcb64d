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
// Widths are padded to multiples of 16 with zero weights (a padded column's activation meets a zero weight
// row in the next layer), so the inner product runs on whole 16-float vectors: GCC vector extensions,
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
typedef int32_t v16i __attribute__((vector_size(64)));

constexpr int64_t kLanes = 16;
constexpr int64_t kRows = 4;        // rows of a register block
constexpr int64_t kMaxPanel = 6;    // vectors of output columns per register block (4 x 6 accumulators)
constexpr int64_t kBlockRows = 64;  // positions per tile: its activations stay in L1/L2

enum Activation : int64_t { kDice = 0, kPrelu = 1, kSigmoid = 2 };

inline v16 splat(float x) { return v16{} + x; }

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// exp(x) for float lanes: Cephes expf's range reduction and polynomial.
inline v16 vexp(v16 x) {
  x = x < splat(88.3762626647949f) ? x : splat(88.3762626647949f);
  x = x > splat(-88.3762626647949f) ? x : splat(-88.3762626647949f);
  v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
  v16 floor_fx = __builtin_convertvector(__builtin_convertvector(fx, v16i), v16);
  floor_fx = floor_fx > fx ? floor_fx - splat(1.0f) : floor_fx;  // truncation to floor for negatives
  x = x - floor_fx * splat(0.693359375f) - floor_fx * splat(-2.12194440e-4f);
  v16 y = splat(1.9875691500e-4f);
  y = y * x + splat(1.3981999507e-3f);
  y = y * x + splat(8.3334519073e-3f);
  y = y * x + splat(4.1665795894e-2f);
  y = y * x + splat(1.6666665459e-1f);
  y = y * x + splat(5.0000001201e-1f);
  y = y * x * x + x + splat(1.0f);
  v16i exponent = (__builtin_convertvector(floor_fx, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return y * scale;
}

inline v16 vsigmoid(v16 x) { return splat(1.0f) / (splat(1.0f) + vexp(-x)); }

// One activation's per-column parameters, padded: dice (mean, 1/sqrt(var + eps), alpha), prelu (alpha).
struct ActivationParams {
  int64_t kind;
  const float* mean;
  const float* inv_std;
  const float* alpha;
};

inline v16 activate(v16 x, const ActivationParams& act, int64_t col) {
  if (act.kind == kDice) {
    v16 alpha = load(act.alpha + col);
    v16 p = vsigmoid((x - load(act.mean + col)) * load(act.inv_std + col));
    v16 ax = x * alpha;
    return ax + p * (x - ax);  // torch.lerp(x * alpha, x, p)
  }
  if (act.kind == kPrelu) {
    v16 ax = x * load(act.alpha + col);
    return x >= splat(0.0f) ? x : ax;
  }
  return vsigmoid(x);
}

// out[r, :] += in[r, :K] · W[:K, :] for `rows` rows (a multiple of kRows); W is [K, width], row stride
// `ldw`; out's columns [0, width) with row stride `ldo`, width a multiple of 16.
template <int J>
void gemm_panel(const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W, int64_t ldw,
                float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; r += kRows) {
    v16 acc[kRows][J];
    for (int64_t i = 0; i < kRows; ++i)
      for (int j = 0; j < J; ++j) acc[i][j] = load(out + (r + i) * ldo + j * kLanes);
    for (int64_t k = 0; k < K; ++k) {
      v16 w[J];
      for (int j = 0; j < J; ++j) w[j] = load(W + k * ldw + j * kLanes);
      for (int64_t i = 0; i < kRows; ++i) {
        v16 x = splat(in[(r + i) * ldi + k]);
        for (int j = 0; j < J; ++j) acc[i][j] += x * w[j];
      }
    }
    for (int64_t i = 0; i < kRows; ++i)
      for (int j = 0; j < J; ++j) store(out + (r + i) * ldo + j * kLanes, acc[i][j]);
  }
}

void gemm_accumulate(const float* in, int64_t ldi, int64_t rows, int64_t K, const float* W, int64_t width,
                     float* out) {
  for (int64_t col = 0; col < width;) {
    const int64_t vectors = std::min<int64_t>(kMaxPanel, (width - col) / kLanes);
    const float* Wp = W + col;
    float* op = out + col;
    switch (vectors) {
      case 1: gemm_panel<1>(in, ldi, rows, K, Wp, width, op, width); break;
      case 2: gemm_panel<2>(in, ldi, rows, K, Wp, width, op, width); break;
      case 3: gemm_panel<3>(in, ldi, rows, K, Wp, width, op, width); break;
      case 4: gemm_panel<4>(in, ldi, rows, K, Wp, width, op, width); break;
      case 5: gemm_panel<5>(in, ldi, rows, K, Wp, width, op, width); break;
      default: gemm_panel<6>(in, ldi, rows, K, Wp, width, op, width); break;
    }
    col += vectors * kLanes;
  }
}

void activate_rows(float* h, int64_t rows, int64_t width, const ActivationParams& act) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t col = 0; col < width; col += kLanes) store(h + r * width + col, activate(load(h + r * width + col), act, col));
}

}  // namespace

// history [L, d] and history_term [L, H1]: L a multiple of 4. target [C, d], target_term [C, H1]. widths[k]
// (k = 0..n_layers-1): layer k's output width, a multiple of 16 (zero padded by the caller); w_prod_t
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
  std::vector<ActivationParams> acts;
  for (int64_t k = 0; k < n_layers; ++k)
    acts.push_back({activation, act_params[k], act_params[k] + widths[k], act_params[k] + 2 * widths[k]});
  const int64_t blocks = (L + kBlockRows - 1) / kBlockRows;

#pragma omp parallel num_threads(threads)
  {
    // M_c = diag(v_c) · W_prod^T for every candidate: [C, d, H1].
#pragma omp for schedule(dynamic, 8)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < d; ++k)
        for (int64_t col = 0; col < H1; col += kLanes)
          store(per_candidate + (c * d + k) * H1 + col, load(w_prod_t + k * H1 + col) * target[c * d + k]);

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
        for (int64_t col = 0; col < H1; col += kLanes) store(h + r * H1 + col, load(A + r * H1 + col) + load(B + col));
      gemm_accumulate(history + l0 * d, d, rows, d, per_candidate + c * d * H1, H1, h);
      activate_rows(h, rows, H1, acts[0]);
      for (int64_t k = 1; k < n_layers; ++k) {
        const int64_t in_width = widths[k - 1], out_width = widths[k];
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t col = 0; col < out_width; col += kLanes) store(next + r * out_width + col, load(biases[k] + col));
        gemm_accumulate(h, in_width, rows, in_width, weights_t[k], out_width, next);
        activate_rows(next, rows, out_width, acts[k]);
        std::swap(h, next);
      }
      const int64_t last = widths[n_layers - 1];
      float* out = scores + c * L + l0;
      for (int64_t r = 0; r < rows; ++r) {
        v16 acc{};
        for (int64_t col = 0; col < last; col += kLanes) acc += load(h + r * last + col) * load(w_out + col);
        float total = 0.0f;
        for (int64_t i = 0; i < kLanes; ++i) total += acc[i];
        out[r] = total + b_out;
      }
    }
  }
}
