// CUDA launch of upfirdn2d: one thread per output sample (grid-stride), the filter in shared
// memory; the per-sample math lives in upfirdn2d.h.

#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include "upfirdn2d.h"

namespace {

template <typename scalar_t>
__global__ void upfirdn2d_kernel(UpFirDn2dParams p, const scalar_t* __restrict__ x,
                                 const at::opmath_type<scalar_t>* __restrict__ filter, scalar_t* __restrict__ y,
                                 int64_t count) {
    using acc_t = at::opmath_type<scalar_t>;  // float for half and bfloat16
    // One untyped buffer: a typed extern __shared__ array would clash between the instantiations.
    extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
    acc_t* taps = reinterpret_cast<acc_t*>(shared_bytes);
    const int64_t num_taps = p.filter_h * p.filter_w;
    for (int64_t i = threadIdx.x; i < num_taps; i += blockDim.x) {
        taps[i] = filter[i];
    }
    __syncthreads();

    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += step) {
        const upfirdn2d_math::OutputCoords o = upfirdn2d_math::output_coords(p, i);
        y[i] = static_cast<scalar_t>(upfirdn2d_math::output_sample<acc_t>(p, x, taps, o));
    }
}

}  // namespace

void launch_upfirdn2d(const UpFirDn2dParams& params, const at::Tensor& x, const at::Tensor& f, at::Tensor& y) {
    constexpr int kThreads = 256;
    const int64_t count = y.numel();
    const int64_t wanted_blocks = (count + kThreads - 1) / kThreads;
    // Enough blocks to fill the device several times over; the grid-stride loop covers the rest.
    int multiprocessors = 0;
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
    const int64_t max_blocks = static_cast<int64_t>(multiprocessors) * 32;
    const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted_blocks, max_blocks)));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_kernel", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const size_t shared_bytes = static_cast<size_t>(params.filter_h * params.filter_w) * sizeof(acc_t);
        upfirdn2d_kernel<scalar_t><<<blocks, kThreads, shared_bytes, stream>>>(
            params, x.const_data_ptr<scalar_t>(), f.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(), count);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
}
