// Elementwise kernel for bias_act: forward, first derivative and second derivative of
// y = clamp(gain * act(x + b)) for every activation of bias_act.py.

#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.h"

namespace {

// Overloads so that one templated body picks the float or the double intrinsic.
__device__ __forceinline__ float device_exp(float v) { return expf(v); }
__device__ __forceinline__ double device_exp(double v) { return exp(v); }
__device__ __forceinline__ float device_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double device_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float device_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double device_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float device_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double device_tanh(double v) { return tanh(v); }

constexpr double kSeluScale = 1.0507009873554804934193349852946;
// Above this, softplus(z) == z to working precision (the threshold torch's softplus uses too).
constexpr double kSoftplusThreshold = 20.0;

template <typename T>
__device__ __forceinline__ T sigmoid_of(T z) {
    return T(1) / (T(1) + device_exp(-z));
}

// a = act(z)
template <int KIND, typename T>
__device__ __forceinline__ T activation(T z, T alpha) {
    switch (KIND) {
        case kRelu: return z > T(0) ? z : T(0);
        case kLrelu: return z > T(0) ? z : z * alpha;
        case kTanh: return device_tanh(z);
        case kSigmoid: return sigmoid_of(z);
        case kElu: return z > T(0) ? z : alpha * device_expm1(z);
        case kSelu: return T(kSeluScale) * (z > T(0) ? z : alpha * device_expm1(z));
        case kSoftplus: return z > T(kSoftplusThreshold) ? z : device_log1p(device_exp(z));
        case kSwish: return z * sigmoid_of(z);
        default: return z;
    }
}

// da/dz written as a function of a (activations whose derivatives use the output).
template <int KIND, typename T>
__device__ __forceinline__ T slope_from_output(T a, T alpha) {
    switch (KIND) {
        case kRelu: return a > T(0) ? T(1) : T(0);
        case kLrelu: return a > T(0) ? T(1) : alpha;
        case kTanh: return T(1) - a * a;
        case kSigmoid: return a * (T(1) - a);
        case kElu: return a > T(0) ? T(1) : a + alpha;
        case kSelu: return a > T(0) ? T(kSeluScale) : a + T(kSeluScale) * alpha;
        case kSoftplus: return -device_expm1(-a);
        default: return T(1);
    }
}

// d(slope_from_output)/da; zero for the piecewise-linear activations.
template <int KIND, typename T>
__device__ __forceinline__ T curvature_from_output(T a) {
    switch (KIND) {
        case kTanh: return T(-2) * a;
        case kSigmoid: return T(1) - T(2) * a;
        case kElu: return a > T(0) ? T(0) : T(1);
        case kSelu: return a > T(0) ? T(0) : T(1);
        case kSoftplus: return device_exp(-a);
        default: return T(0);
    }
}

// Swish is the one activation whose derivatives are taken from z: its output does not determine z.
template <typename T>
__device__ __forceinline__ T swish_slope(T z) {
    const T s = sigmoid_of(z);
    return s + z * s * (T(1) - s);
}

template <typename T>
__device__ __forceinline__ T swish_curvature(T z) {
    const T s = sigmoid_of(z);
    return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
}

__host__ __device__ constexpr bool kind_uses_output(int kind) {
    return kind != kSwish;
}

template <int KIND, typename scalar_t>
__global__ void bias_act_kernel(BiasActParams p, const scalar_t* __restrict__ input,
                                const scalar_t* __restrict__ bias, const scalar_t* __restrict__ ref,
                                scalar_t* __restrict__ out) {
    using T = at::opmath_type<scalar_t>;
    const T alpha = static_cast<T>(p.alpha);
    const T gain = static_cast<T>(p.gain);
    const T clamp = static_cast<T>(p.clamp);
    const bool clamped = p.clamp >= 0;
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += step) {
        const T b = p.bias_size > 0 ? static_cast<T>(bias[(i / p.bias_stride) % p.bias_size]) : T(0);
        const T value = static_cast<T>(input[i]);
        T result;
        if (p.mode == 0) {
            result = activation<KIND>(value + b, alpha) * gain;
            if (clamped) result = result > clamp ? clamp : (result < -clamp ? -clamp : result);
        } else if (kind_uses_output(KIND)) {
            const T y = static_cast<T>(ref[i]);
            // A clamped output has zero derivative, and y / gain need not be a valid activation value there.
            const bool passes = (!clamped || (y < clamp && y > -clamp)) && gain != T(0);
            const T a = passes ? y / gain : T(0);
            if (!passes) {
                result = T(0);
            } else if (p.mode == 1) {
                result = value * slope_from_output<KIND>(a, alpha) * gain;
            } else {
                result = value * curvature_from_output<KIND>(a);
            }
        } else {
            const T z = static_cast<T>(ref[i]) + b;
            const T y = activation<KIND>(z, alpha) * gain;
            const bool passes = !clamped || (y < clamp && y > -clamp);
            if (!passes) {
                result = T(0);
            } else if (p.mode == 1) {
                result = value * swish_slope(z) * gain;
            } else {
                result = value * swish_curvature(z) * gain;
            }
        }
        out[i] = static_cast<scalar_t>(result);
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

bool bias_act_kind_uses_output(int kind) {
    return kind_uses_output(kind);
}

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
