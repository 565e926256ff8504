"""The aggregation of benchmarks/training_step.py: FLOP counts, forward/backward split, sources and copies."""

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.training_step import OpRecord, aggregate_ops, compute_rows, convolution_flops, op_records
from torch_utils.ops import bias_act, conv2d_gradfix


def test_convolution_flops_of_forward_transposed_and_backward():
    # 2 * N * H_out * W_out * weight elements; stride 2 halves the output.
    assert convolution_flops(
        'aten::convolution',
        [[2, 8, 16, 16], [4, 8, 3, 3]],
        [None, None, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1],
    ) == 2 * 2 * 8 * 8 * (4 * 8 * 9)
    # Transposed: every input pixel meets the whole weight [C_in, C_out, kh, kw].
    assert convolution_flops(
        'aten::convolution',
        [[1, 4, 8, 8], [4, 2, 3, 3], []],
        [None, None, None, [2, 2], [1, 1], [1, 1], True, [1, 1], 1],
    ) == 2 * 64 * (4 * 2 * 9)
    # Backward: one convolution's worth per gradient asked for.
    shapes = [[1, 4, 8, 8], [1, 8, 8, 8], [4, 8, 3, 3]]
    arguments = [None, None, None, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1]
    one = 2 * 64 * (4 * 8 * 9)
    assert convolution_flops('aten::convolution_backward', shapes, [*arguments, [True, True, False]]) == 2 * one
    assert convolution_flops('aten::convolution_backward', shapes, [*arguments, [False, True, False]]) == one


def test_records_of_a_profiled_layer():
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    weight = torch.randn(8, 8, 3, 3, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True, with_flops=True) as prof:
        y = bias_act.bias_act(conv2d_gradfix.conv2d(x, weight, padding=1), None, act='lrelu')
        y.square().sum().backward()
    records = op_records(prof.events())
    conv_flops = 2 * 2 * 16 * 16 * weight.numel()

    forward_convs = [r for r in records if r.name == 'aten::convolution' and not r.backward]
    assert [r.flops for r in forward_convs] == [conv_flops]
    assert forward_convs[0].source == 'torch_utils/ops/conv2d_gradfix.py'
    # The input gradient is a transposed convolution, the weight gradient a convolution_backward: both backward.
    backward_flops = sum(r.flops for r in records if r.backward)
    assert backward_flops == 2 * conv_flops
    assert any(r.name == 'aten::leaky_relu_backward' and r.backward for r in records)
    # A backward op is charged to the file whose forward op built its autograd node.
    assert {r.source for r in records if r.name == 'aten::leaky_relu_backward'} == {'torch_utils/ops/bias_act.py'}
    # FLOPs are counted once per convolution, not again in aten::_convolution below it.
    assert all(r.flops == 0 for r in records if r.name == 'aten::_convolution')


def test_aggregation_sums_by_direction_and_name():
    records = [
        OpRecord('aten::mul', False, 10.0, 10.0, 0.0, 'a.py', 'M', ''),
        OpRecord('aten::mul', True, 30.0, 30.0, 0.0, 'a.py', 'M', ''),
        OpRecord('aten::mul', True, 5.0, 5.0, 0.0, 'b.py', 'M', ''),
        OpRecord('aten::mm', False, 20.0, 25.0, 1e6, 'b.py', 'M', ''),
    ]
    rows = aggregate_ops(records)
    assert rows[0] == ('bwd', 'aten::mul', 35.0, 2, 0.0, 0.0)
    assert rows[1] == ('fwd', 'aten::mm', 20.0, 1, 1e6, 25.0)
    assert compute_rows(records) == [('fwd', 'aten::mm', 1e6, 25.0)]
