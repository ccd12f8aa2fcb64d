// The BD-LRU scan h_t = a_t * h_{t-1} + beta_t on CPU: one OpenMP region per call, minimum memory traffic.
//
// Inputs are contiguous [outer, L, inner] tensors, time in the middle: time-major [L, B, D] is [1, L, B*D],
// batch-first [B, L, D] is [B, L, D], both free views. Channels (outer x inner) are independent, so each
// thread takes blocks of channels and walks the whole sequence for them, keeping the running state in a
// small local array: every input element is read once and every output element written once, the scan's
// bandwidth floor. (Per-step
// torch ops cannot get there: each op pays dispatch overhead, and under OMP_WAIT_POLICY=PASSIVE every
// multi-threaded op also pays a thread wake-up; see longrec/kernels/scan.py.)
//
// Large outputs are written with non-temporal (streaming) stores: a normal store first reads the cache line
// it writes, so without them the backward pass (3 tensors in, 2 out) moves 7 tensors' worth of bytes, not 5
// (kernel alone, L=1000, N=8192, 2 threads: 6.4 ms with normal stores, 4.2 ms with streaming ones).
//
// 16-bit inputs accumulate in float (at::opmath_type); float and double keep their precision.
// Backward is the reverse scan g_t = dh_t + a_{t+1} g_{t+1}; d beta_t = g_t; d a_t = h_{t-1} g_t.

#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace {

// Widest channel block one thread scans at a time: its state (16 KiB of float) stays in L1, and each row
// visit streams whole cache lines and pages of every tensor.
constexpr int64_t kMaxBlock = 4096;
// Outputs below this stay in cache for their consumer: store them normally.
constexpr int64_t kStreamingBytes = 8 << 20;

// Channel blocks of an [outer, L, inner] tensor: `width` channels of one outer index each.
struct Blocks {
  int64_t outer, steps, inner, width, per_outer;

  Blocks(const torch::Tensor& x) : outer(x.size(0)), steps(x.size(1)), inner(x.size(2)) {
    // Split the inner axis only as far as needed to give every thread a block.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t splits = std::max<int64_t>(1, (threads + outer - 1) / std::max<int64_t>(1, outer));
    const int64_t per_split = (inner + splits - 1) / splits;
    // A multiple of 16 elements keeps every block start 64-byte aligned when the rows are.
    width = std::clamp<int64_t>((per_split + 15) / 16 * 16, 16, kMaxBlock);
    per_outer = (inner + width - 1) / width;
  }
  int64_t count() const { return outer * per_outer; }
  // Offset of (block, step 0) and the number of channels in the block.
  int64_t start(int64_t block) const { return (block / per_outer) * steps * inner + (block % per_outer) * width; }
  int64_t size(int64_t block) const { return std::min(width, inner - (block % per_outer) * width); }
};

// streaming: -1 = by output size (the default), 0 = never, 1 = always (benchmarks compare the two).
template <typename scalar_t>
bool use_streaming_stores(const torch::Tensor& out, int64_t streaming) {
#if defined(__SSE2__)
  const bool supported = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
  if (!supported || streaming == 0) return false;
  return streaming == 1 || out.numel() * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamingBytes;
#else
  return false;
#endif
}

// dst[0..w) = src[0..w), converted to the output dtype; streaming stores where asked for and aligned.
template <typename scalar_t, typename acc_t>
inline void write_row(scalar_t* __restrict__ dst, const acc_t* __restrict__ src, int64_t w, bool streaming) {
  int64_t j = 0;
#if defined(__SSE2__)
  if (streaming && reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
      for (; j + 4 <= w; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    } else if constexpr (std::is_same_v<scalar_t, double> && std::is_same_v<acc_t, double>) {
      for (; j + 2 <= w; j += 2) _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
    }
  }
#endif
  for (; j < w; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

inline void finish_streaming_stores() {
#if defined(__SSE2__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before the region ends
#endif
}

void check_steps(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 3, name, " must be [outer, L, inner], got ", x.dim(), " dims");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

template <typename scalar_t>
void forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ beta, scalar_t* __restrict__ h,
                    const Blocks& blocks, bool streaming) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, blocks.count(), 1, [&](int64_t first, int64_t last) {
    std::vector<acc_t> state_buffer(blocks.width);
    acc_t* __restrict__ state = state_buffer.data();
    for (int64_t block = first; block < last; ++block) {
      const int64_t w = blocks.size(block);
      std::fill(state, state + w, acc_t(0));
      for (int64_t t = 0, row = blocks.start(block); t < blocks.steps; ++t, row += blocks.inner) {
        const scalar_t* __restrict__ a_t = a + row;
        const scalar_t* __restrict__ beta_t = beta + row;
        for (int64_t j = 0; j < w; ++j) {
          state[j] = static_cast<acc_t>(a_t[j]) * state[j] + static_cast<acc_t>(beta_t[j]);
        }
        write_row(h + row, state, w, streaming);
      }
    }
    if (streaming) finish_streaming_stores();
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ h,
                     const scalar_t* __restrict__ grad_h, scalar_t* __restrict__ grad_a,
                     scalar_t* __restrict__ grad_beta, const Blocks& blocks, bool streaming) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = blocks.inner;
  at::parallel_for(0, blocks.count(), 1, [&](int64_t first, int64_t last) {
    std::vector<acc_t> buffers(2 * blocks.width);
    acc_t* __restrict__ g = buffers.data();
    acc_t* __restrict__ grad_a_row = buffers.data() + blocks.width;
    for (int64_t block = first; block < last; ++block) {
      const int64_t w = blocks.size(block);
      std::fill(g, g + w, acc_t(0));
      for (int64_t t = blocks.steps - 1; t >= 0; --t) {
        const int64_t row = blocks.start(block) + t * stride;
        const scalar_t* __restrict__ grad_t = grad_h + row;
        if (t + 1 < blocks.steps) {
          const scalar_t* __restrict__ a_next = a + row + stride;
          for (int64_t j = 0; j < w; ++j) {
            g[j] = static_cast<acc_t>(grad_t[j]) + static_cast<acc_t>(a_next[j]) * g[j];
          }
        } else {
          for (int64_t j = 0; j < w; ++j) g[j] = static_cast<acc_t>(grad_t[j]);
        }
        if (t > 0) {
          const scalar_t* __restrict__ h_prev = h + row - stride;
          for (int64_t j = 0; j < w; ++j) grad_a_row[j] = static_cast<acc_t>(h_prev[j]) * g[j];
        } else {
          std::fill(grad_a_row, grad_a_row + w, acc_t(0));  // h_{-1} = 0
        }
        write_row(grad_beta + row, g, w, streaming);
        write_row(grad_a + row, grad_a_row, w, streaming);
      }
    }
    if (streaming) finish_streaming_stores();
  });
}

torch::Tensor scan_forward(const torch::Tensor& a, const torch::Tensor& beta, int64_t streaming) {
  check_steps(a, "a");
  check_steps(beta, "beta");
  TORCH_CHECK(a.sizes() == beta.sizes(), "a and beta must have the same shape");
  TORCH_CHECK(a.scalar_type() == beta.scalar_type(), "a and beta must have the same dtype");
  auto h = torch::empty_like(beta);
  if (h.numel() == 0) return h;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, beta.scalar_type(), "longrec_scan_forward", [&] {
    forward_kernel<scalar_t>(a.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                             Blocks(beta), use_streaming_stores<scalar_t>(h, streaming));
  });
  return h;
}

std::vector<torch::Tensor> scan_backward(const torch::Tensor& a, const torch::Tensor& h,
                                         const torch::Tensor& grad_h, int64_t streaming) {
  check_steps(a, "a");
  check_steps(h, "h");
  check_steps(grad_h, "grad_h");
  TORCH_CHECK(a.sizes() == h.sizes() && h.sizes() == grad_h.sizes(), "a, h and grad_h must have one shape");
  TORCH_CHECK(a.scalar_type() == h.scalar_type() && h.scalar_type() == grad_h.scalar_type(),
              "a, h and grad_h must have one dtype");
  auto grad_a = torch::empty_like(a);
  auto grad_beta = torch::empty_like(grad_h);
  if (a.numel() == 0) return {grad_a, grad_beta};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "longrec_scan_backward", [&] {
    backward_kernel<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(),
                              grad_a.data_ptr<scalar_t>(), grad_beta.data_ptr<scalar_t>(), Blocks(a),
                              use_streaming_stores<scalar_t>(grad_a, streaming));
  });
  return {grad_a, grad_beta};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "BD-LRU linear scan on CPU (longrec)";
  m.def("scan_forward", &scan_forward, "h_t = a_t * h_{t-1} + beta_t along axis 1 of [outer, L, inner]",
        pybind11::arg("a"), pybind11::arg("beta"), pybind11::arg("streaming") = -1);
  m.def("scan_backward", &scan_backward, "(grad_a, grad_beta) of the scan along axis 1 of [outer, L, inner]",
        pybind11::arg("a"), pybind11::arg("h"), pybind11::arg("grad_h"), pybind11::arg("streaming") = -1);
}
