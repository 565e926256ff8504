"""Tests for torch_utils/ops/conv2d_gradfix.py against torch.nn.functional and by gradcheck."""

import itertools
import random
import threading

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix


def random_case(rng: random.Random, transposed: bool, small: bool = False) -> dict:
    groups = rng.choice([1, 2] if small else [1, 1, 2, 3])
    channels_in = groups * rng.randint(1, 2 if small else 3)
    channels_out = groups * rng.randint(1, 2 if small else 3)
    kernel = (rng.randint(1, 3 if small else 4), rng.randint(1, 3 if small else 4))
    case = dict(
        input_shape=(rng.randint(1, 2), channels_in, rng.randint(5, 9), rng.randint(5, 9)),
        weight_shape=(channels_in, channels_out // groups, *kernel)
        if transposed
        else (channels_out, channels_in // groups, *kernel),
        bias=rng.random() < 0.5,
        stride=(rng.randint(1, 3), rng.randint(1, 3)),
        padding=(rng.randint(0, 2), rng.randint(0, 2)),
        dilation=(rng.randint(1, 2), rng.randint(1, 2)),
        groups=groups,
    )
    if transposed:
        # Output padding must stay below the stride or the dilation.
        case['output_padding'] = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(case['stride'], case['dilation']))
    return case


def make_tensors(case: dict, dtype=torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(case['input_shape'], dtype=dtype, generator=generator, requires_grad=True)
    weight = torch.randn(case['weight_shape'], dtype=dtype, generator=generator, requires_grad=True)
    out_channels = case['weight_shape'][1] * case['groups'] if 'output_padding' in case else case['weight_shape'][0]
    bias = torch.randn(out_channels, dtype=dtype, generator=generator, requires_grad=True) if case['bias'] else None
    return input, weight, bias


def call(module, case: dict, input, weight, bias):
    kwargs = dict(stride=case['stride'], padding=case['padding'], dilation=case['dilation'], groups=case['groups'])
    if 'output_padding' in case:
        return module.conv_transpose2d(input, weight, bias, output_padding=case['output_padding'], **kwargs)
    return module.conv2d(input, weight, bias, **kwargs)


def inputs_of(input, weight, bias):
    return [t for t in (input, weight, bias) if t is not None]


@pytest.mark.parametrize('transposed', [False, True], ids=['conv2d', 'conv_transpose2d'])
def test_matches_torch_functional(transposed):
    rng = random.Random(1 + transposed)
    for index in range(12):
        case = random_case(rng, transposed)
        input, weight, bias = make_tensors(case, seed=index)
        ours = call(conv2d_gradfix, case, input, weight, bias)
        theirs = call(F, case, input, weight, bias)
        torch.testing.assert_close(ours, theirs, msg=lambda m: f'{case}: {m}')
        upstream = torch.randn_like(theirs)
        # First derivatives, then a second derivative of an R1-like penalty on the input gradient.
        ours_grads = torch.autograd.grad((ours * upstream).sum(), inputs_of(input, weight, bias), create_graph=True)
        theirs_grads = torch.autograd.grad((theirs * upstream).sum(), inputs_of(input, weight, bias), create_graph=True)
        for a, b in zip(ours_grads, theirs_grads):
            torch.testing.assert_close(a, b, msg=lambda m: f'{case}: {m}')
        ours_second = torch.autograd.grad(ours_grads[0].square().sum() + ours_grads[1].square().sum(), [input, weight])
        theirs_second = torch.autograd.grad(
            theirs_grads[0].square().sum() + theirs_grads[1].square().sum(), [input, weight]
        )
        for a, b in zip(ours_second, theirs_second):
            torch.testing.assert_close(a, b, msg=lambda m: f'{case}: {m}')


@pytest.mark.parametrize('transposed', [False, True], ids=['conv2d', 'conv_transpose2d'])
def test_gradcheck_and_gradgradcheck(transposed):
    rng = random.Random(10 + transposed)
    for index in range(3):
        case = random_case(rng, transposed, small=True)
        # Large enough for the widest dilated kernel of a plain convolution; transposed ones grow instead.
        size = 3 if transposed else 5
        case['input_shape'] = (1, case['input_shape'][1], size, size)
        tensors = make_tensors(case, seed=index)

        def function(*args):
            input, weight = args[:2]
            return call(conv2d_gradfix, case, input, weight, args[2] if case['bias'] else None)

        assert torch.autograd.gradcheck(function, inputs_of(*tensors))
        assert torch.autograd.gradgradcheck(function, inputs_of(*tensors))


@pytest.mark.parametrize('transposed', [False, True], ids=['conv2d', 'conv_transpose2d'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_strided_weight_gradient_matches_torch_functional(transposed, channels_last):
    """Strided, undilated convolutions take their weight gradient as a sum over stride phases on the
    CPU; it must equal autograd's through torch.nn.functional for every stride, kernel, padding and
    group count, whichever memory layout the activations arrive in."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for stride, kernel, padding, groups in itertools.product(
        [(2, 2), (3, 2), (2, 1)], [(3, 3), (4, 1), (1, 2)], [(0, 0), (1, 2)], [1, 2]
    ):
        case = dict(
            input_shape=(2, 2 * groups, 7, 8),
            weight_shape=(2 * groups, 3, *kernel) if transposed else (3 * groups, 2, *kernel),
            bias=False,
            stride=stride,
            padding=padding,
            dilation=(1, 1),
            groups=groups,
        )
        if transposed:
            case['output_padding'] = (stride[0] - 1, 0)
        input, weight, _ = make_tensors(case)
        input = input.detach().to(memory_format=layout).requires_grad_()
        ours = call(conv2d_gradfix, case, input, weight, None)
        upstream = torch.randn_like(ours).to(memory_format=layout)
        (ours_grad,) = torch.autograd.grad((ours * upstream).sum(), [weight])
        (theirs_grad,) = torch.autograd.grad((call(F, case, input, weight, None) * upstream).sum(), [weight])
        torch.testing.assert_close(ours_grad, theirs_grad, msg=lambda m: f'{case}: {m}')


@pytest.mark.parametrize('transposed', [False, True], ids=['conv2d', 'conv_transpose2d'])
def test_no_weight_gradients(transposed):
    case = dict(
        input_shape=(2, 4, 7, 6),
        weight_shape=(4, 2, 3, 3),
        bias=True,
        stride=(2, 1),
        padding=(1, 1),
        dilation=(1, 1),
        groups=2,
    )
    if transposed:
        case['output_padding'] = (1, 0)
    input, weight, bias = make_tensors(case)

    with conv2d_gradfix.no_weight_gradients():
        out = call(conv2d_gradfix, case, input, weight, bias)
        out.square().sum().backward()
    assert weight.grad is None
    reference = call(F, case, input, weight, bias)
    (expected_input_grad,) = torch.autograd.grad(reference.square().sum(), [input])
    torch.testing.assert_close(input.grad, expected_input_grad)

    # R1 pattern: the forward runs outside the block, the input gradient inside it, and the
    # penalty's backward afterwards still reaches the weights through the double backward.
    input.grad = None
    out = call(conv2d_gradfix, case, input, weight, bias)
    with conv2d_gradfix.no_weight_gradients():
        (input_grad,) = torch.autograd.grad(out.sin().sum(), [input], create_graph=True)
    input_grad.square().sum().backward()
    reference = call(F, case, input, weight, bias)
    (expected_input_grad,) = torch.autograd.grad(reference.sin().sum(), [input], create_graph=True)
    expected = torch.autograd.grad(expected_input_grad.square().sum(), [input, weight])
    torch.testing.assert_close(input.grad, expected[0])
    torch.testing.assert_close(weight.grad, expected[1])


def test_no_weight_gradients_is_scoped_and_can_be_disabled():
    input = torch.randn(1, 2, 5, 5, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)

    def weight_grad_present() -> bool:
        weight.grad = None
        conv2d_gradfix.conv2d(input, weight).sum().backward()
        return weight.grad is not None

    with conv2d_gradfix.no_weight_gradients(disable=True):
        assert weight_grad_present()
    with conv2d_gradfix.no_weight_gradients():
        assert not weight_grad_present()
        seen_in_thread = []
        thread = threading.Thread(target=lambda: seen_in_thread.append(weight_grad_present()))
        thread.start()
        thread.join()
        assert seen_in_thread == [True], 'the context must not leak into other threads'
    assert weight_grad_present()
    with pytest.raises(TypeError):
        conv2d_gradfix.no_weight_gradients(True)  # keyword-only, so that a flag cannot be read backwards


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match='must be 4-d'):
        conv2d_gradfix.conv2d(torch.randn(2, 5, 5), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="padding='same' is not supported"):
        conv2d_gradfix.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding='same')
    with pytest.raises(ValueError, match='stride must be an int or a pair'):
        conv2d_gradfix.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), stride=(1, 2, 3))
