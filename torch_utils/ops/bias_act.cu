// CUDA launch of bias_act: one grid-stride elementwise kernel per activation and dtype; the
// per-element math lives in bias_act.h.

#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.h"

namespace {

template <int KIND, typename scalar_t>
__global__ void bias_act_kernel(BiasActParams p, const scalar_t* __restrict__ input,
                                const scalar_t* __restrict__ bias, const scalar_t* __restrict__ ref,
                                scalar_t* __restrict__ out) {
    using T = at::opmath_type<scalar_t>;  // float for half and bfloat16
    const T alpha = static_cast<T>(p.alpha);
    const T gain = static_cast<T>(p.gain);
    // The clamp as the storage type holds it: a clamped output is stored as exactly this value, so
    // that the gradient launches, which see only the stored output, recognise it as clamped.
    const T clamp = p.clamp < 0 ? T(-1) : static_cast<T>(static_cast<scalar_t>(p.clamp));
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += step) {
        const T b = p.bias_size > 0 ? static_cast<T>(bias[(i / p.bias_stride) % p.bias_size]) : T(0);
        const T r = p.mode > 0 ? static_cast<T>(ref[i]) : T(0);
        out[i] = static_cast<scalar_t>(
            bias_act_math::element<KIND, T>(p.mode, static_cast<T>(input[i]), b, r, alpha, gain, clamp));
    }
}

template <int KIND>
void launch_kind(const BiasActParams& params, const at::Tensor& input, const at::Tensor& bias,
                 const at::Tensor& ref, at::Tensor& out) {
    constexpr int kThreads = 256;
    const int64_t wanted_blocks = (params.numel + kThreads - 1) / kThreads;
    // Enough blocks to fill the device several times over; the grid-stride loop covers the rest.
    int multiprocessors = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
    const int64_t max_blocks = static_cast<int64_t>(multiprocessors) * 32;
    const unsigned int blocks = static_cast<unsigned int>(std::min(wanted_blocks, max_blocks));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bias_act_kernel", [&] {
        bias_act_kernel<KIND, scalar_t><<<blocks, kThreads, 0, stream>>>(
            params, input.const_data_ptr<scalar_t>(),
            bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
            ref.defined() ? ref.const_data_ptr<scalar_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
}

}  // namespace

void launch_bias_act(const BiasActParams& params, const at::Tensor& input, const at::Tensor& bias,
                     const at::Tensor& ref, at::Tensor& out) {
    switch (params.kind) {
        case kLinear: launch_kind<kLinear>(params, input, bias, ref, out); break;
        case kRelu: launch_kind<kRelu>(params, input, bias, ref, out); break;
        case kLrelu: launch_kind<kLrelu>(params, input, bias, ref, out); break;
        case kTanh: launch_kind<kTanh>(params, input, bias, ref, out); break;
        case kSigmoid: launch_kind<kSigmoid>(params, input, bias, ref, out); break;
        case kElu: launch_kind<kElu>(params, input, bias, ref, out); break;
        case kSelu: launch_kind<kSelu>(params, input, bias, ref, out); break;
        case kSoftplus: launch_kind<kSoftplus>(params, input, bias, ref, out); break;
        case kSwish: launch_kind<kSwish>(params, input, bias, ref, out); break;
        default: TORCH_CHECK(false, "bias_act: unknown activation kind ", params.kind);
    }
}
