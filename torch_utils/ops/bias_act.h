// Fused bias + activation + gain + clamp: the per-element math shared by the CUDA kernel
// (bias_act.cu) and host-side checks, and the interface between bias_act.cpp and bias_act.cu.
// Free of ATen includes so that the math also compiles as plain C++.

#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define BIAS_ACT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BIAS_ACT_HOST_DEVICE inline
#endif

// Kernel ids, in the order of ACTIVATIONS in bias_act.py.
enum BiasActKind : int {
    kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumBiasActKinds
};

// What one launch computes for every element, with z = x + b and y = clamp(gain * act(z)):
//   mode 0: out = y
//   mode 1: out = input * dy/dz, recovering dy/dz from the reference tensor
//           (y, or x where bias_act_kind_uses_output is false)
//   mode 2: out = input * d(dy/dz)/d(ref), the derivative of mode 1 with respect to its reference.
struct BiasActParams {
    int kind;
    int mode;
    double alpha;
    double gain;
    double clamp;             // < 0: no clamp
    int64_t numel;
    int64_t bias_stride;      // stride of the bias dimension in input/ref/out, in elements
    int64_t bias_size;        // 0: no bias
};

namespace at { class Tensor; }

// input, ref (or undefined in mode 0), bias (or undefined) and out share dtype, device and strides.
void launch_bias_act(const BiasActParams& params, const at::Tensor& input, const at::Tensor& bias,
                     const at::Tensor& ref, at::Tensor& out);

// Whether the mode-1/2 derivatives of an activation are computed from y (true) or from x (false).
// Swish is the one activation whose output does not determine its input.
BIAS_ACT_HOST_DEVICE constexpr bool bias_act_kind_uses_output(int kind) {
    return kind != kSwish;
}

namespace bias_act_math {

// Overloads so that one templated body picks the float or the double function.
BIAS_ACT_HOST_DEVICE float exp_of(float v) { return expf(v); }
BIAS_ACT_HOST_DEVICE double exp_of(double v) { return exp(v); }
BIAS_ACT_HOST_DEVICE float expm1_of(float v) { return expm1f(v); }
BIAS_ACT_HOST_DEVICE double expm1_of(double v) { return expm1(v); }
BIAS_ACT_HOST_DEVICE float log1p_of(float v) { return log1pf(v); }
BIAS_ACT_HOST_DEVICE double log1p_of(double v) { return log1p(v); }
BIAS_ACT_HOST_DEVICE float tanh_of(float v) { return tanhf(v); }
BIAS_ACT_HOST_DEVICE double tanh_of(double v) { return tanh(v); }

constexpr double kSeluScale = 1.0507009873554804934193349852946;
// Above this, softplus(z) == z to working precision (the threshold torch's softplus uses too).
constexpr double kSoftplusThreshold = 20.0;

template <typename T>
BIAS_ACT_HOST_DEVICE T sigmoid_of(T z) {
    return T(1) / (T(1) + exp_of(-z));
}

// a = act(z)
template <int KIND, typename T>
BIAS_ACT_HOST_DEVICE T activation(T z, T alpha) {
    switch (KIND) {
        case kRelu: return z > T(0) ? z : T(0);
        case kLrelu: return z > T(0) ? z : z * alpha;
        case kTanh: return tanh_of(z);
        case kSigmoid: return sigmoid_of(z);
        case kElu: return z > T(0) ? z : alpha * expm1_of(z);
        case kSelu: return T(kSeluScale) * (z > T(0) ? z : alpha * expm1_of(z));
        case kSoftplus: return z > T(kSoftplusThreshold) ? z : log1p_of(exp_of(z));
        case kSwish: return z * sigmoid_of(z);
        default: return z;
    }
}

// da/dz written as a function of a (activations whose derivatives use the output).
template <int KIND, typename T>
BIAS_ACT_HOST_DEVICE T slope_from_output(T a, T alpha) {
    switch (KIND) {
        case kRelu: return a > T(0) ? T(1) : T(0);
        case kLrelu: return a > T(0) ? T(1) : alpha;
        case kTanh: return T(1) - a * a;
        case kSigmoid: return a * (T(1) - a);
        case kElu: return a > T(0) ? T(1) : a + alpha;
        case kSelu: return a > T(0) ? T(kSeluScale) : a + T(kSeluScale) * alpha;
        case kSoftplus: return -expm1_of(-a);
        default: return T(1);
    }
}

// d(slope_from_output)/da; zero for the piecewise-linear activations.
template <int KIND, typename T>
BIAS_ACT_HOST_DEVICE T curvature_from_output(T a) {
    switch (KIND) {
        case kTanh: return T(-2) * a;
        case kSigmoid: return T(1) - T(2) * a;
        case kElu: return a > T(0) ? T(0) : T(1);
        case kSelu: return a > T(0) ? T(0) : T(1);
        case kSoftplus: return exp_of(-a);
        default: return T(0);
    }
}

template <typename T>
BIAS_ACT_HOST_DEVICE T swish_slope(T z) {
    const T s = sigmoid_of(z);
    return s + z * s * (T(1) - s);
}

template <typename T>
BIAS_ACT_HOST_DEVICE T swish_curvature(T z) {
    const T s = sigmoid_of(z);
    return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
}

// One output element of `mode` (see BiasActParams) from the input value, its bias and its
// reference value (ignored in mode 0). clamp < 0 means no clamp.
template <int KIND, typename T>
BIAS_ACT_HOST_DEVICE T element(int mode, T value, T bias, T ref, T alpha, T gain, T clamp) {
    const bool clamped = clamp >= T(0);
    if (mode == 0) {
        const T y = activation<KIND>(value + bias, alpha) * gain;
        return clamped ? (y > clamp ? clamp : (y < -clamp ? -clamp : y)) : y;
    }
    if (bias_act_kind_uses_output(KIND)) {
        // A clamped output has zero derivative, and ref / gain need not be a valid activation value there.
        const bool passes = (!clamped || (ref < clamp && ref > -clamp)) && gain != T(0);
        if (!passes) return T(0);
        const T a = ref / gain;
        return mode == 1 ? value * slope_from_output<KIND>(a, alpha) * gain : value * curvature_from_output<KIND>(a);
    }
    const T z = ref + bias;
    const T y = activation<KIND>(z, alpha) * gain;
    if (clamped && !(y < clamp && y > -clamp)) return T(0);
    return value * (mode == 1 ? swish_slope(z) : swish_curvature(z)) * gain;
}

}  // namespace bias_act_math
