// Fused bias + activation + gain + clamp: the interface between bias_act.cpp (checks, binding)
// and bias_act.cu (the elementwise kernel).

#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

// Kernel ids, in the order of ACTIVATIONS in bias_act.py.
enum BiasActKind : int {
    kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kNumBiasActKinds
};

// What one launch computes for every element, with z = x + b and y = clamp(gain * act(z)):
//   mode 0: out = y
//   mode 1: out = input * dy/dz, recovering dy/dz from the reference tensor (ref_is_output: y, else x)
//   mode 2: out = input * d(dy/dz)/d(ref), the derivative of mode 1 with respect to its reference.
struct BiasActParams {
    int kind;
    int mode;
    bool ref_is_output;
    double alpha;
    double gain;
    double clamp;             // < 0: no clamp
    int64_t numel;
    int64_t bias_stride;      // stride of the bias dimension in input/ref/out, in elements
    int64_t bias_size;        // 0: no bias
};

// input, ref (or undefined in mode 0), bias (or undefined) and out share dtype, device and strides.
void launch_bias_act(const BiasActParams& params, const at::Tensor& input, const at::Tensor& bias,
                     const at::Tensor& ref, at::Tensor& out);

// Whether the mode-1/2 derivatives of an activation are computed from y (true) or from x (false).
bool bias_act_kind_uses_output(int kind);
