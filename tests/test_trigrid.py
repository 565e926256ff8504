import numpy as np
import pytest
import torch

from tests.host_build import cpu_plugin_or_skip
from training.volumetric_rendering import trigrid
from training.volumetric_rendering.trigrid import planes_from_backbone, sample_trigrid

# World axes (x=0, y=1, z=2) along each plane volume's (W, H, D) axes, written out from the
# plane definitions (x, y, z), (x, z, y), (y, z, x).
PLANE_WORLD_AXES = {0: (0, 1, 2), 1: (0, 2, 1), 2: (1, 2, 0)}


def linear_trigrid(
    matrix: torch.Tensor,
    offset: torch.Tensor,
    box_warp: float,
    depth: int,
    height: int,
    width: int,
    dtype=torch.float64,
) -> torch.Tensor:
    """A tri-grid whose every plane stores f(p) = matrix @ p + offset at its voxel centres.

    matrix [C, 3], offset [C] -> planes [1, 3, C, depth, height, width]
    Trilinear interpolation reproduces a linear function exactly, so sampling any point whose
    plane coordinates lie within the voxel centres returns f(p) from every plane.
    """
    planes = []
    for plane in range(3):
        sizes = {'W': width, 'H': height, 'D': depth}
        centres = {
            axis: ((torch.arange(size, dtype=dtype) + 0.5) * 2 / size - 1) * box_warp / 2
            for axis, size in sizes.items()
        }
        grid_d, grid_h, grid_w = torch.meshgrid(centres['D'], centres['H'], centres['W'], indexing='ij')
        world = [None, None, None]
        for volume_axis, world_axis in zip((grid_w, grid_h, grid_d), PLANE_WORLD_AXES[plane]):
            world[world_axis] = volume_axis
        position = torch.stack(world, dim=-1)  # [D, H, W, 3]
        planes.append((position @ matrix.T.to(dtype) + offset.to(dtype)).permute(3, 0, 1, 2))
    return torch.stack(planes)[None]


def fused_plugin_or_skip():
    """The fused C++ gather; skips without a C++ compiler, fails when one is present but the build fails."""
    return cpu_plugin_or_skip(trigrid._gather_plugin, 'the fused C++ gather (trigrid_gather.cpp)')


@pytest.fixture(params=['fused', 'torch'])
def gather_impl(request, monkeypatch):
    """Run a test with the fused C++ gather (trigrid_gather.cpp) and with the PyTorch ops."""
    if request.param == 'fused':
        fused_plugin_or_skip()
    else:
        monkeypatch.setattr(trigrid, '_gather_plugin', lambda: None)
    return request.param


def random_points(generator, batch, count, low, high, dtype=torch.float32):
    return low + (high - low) * torch.rand(batch, count, 3, generator=generator, dtype=dtype)


def test_planes_from_backbone_channel_layout():
    channels, depth = 4, 3
    backbone = torch.randn(2, 3 * channels * depth, 5, 6)
    planes = planes_from_backbone(backbone, channels, depth)
    assert planes.shape == (2, 3, channels, depth, 5, 6)
    for plane, feature, slice_ in [(0, 0, 0), (1, 2, 1), (2, 3, 2), (2, 0, 1)]:
        channel = plane * channels * depth + feature * depth + slice_
        torch.testing.assert_close(planes[:, plane, feature, slice_], backbone[:, channel])
    with pytest.raises(ValueError, match='channels'):
        planes_from_backbone(backbone, 5, 3)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_gather_layout_gradient_comes_back_in_the_backbone_layout(channels_last):
    """gather_layout is permute + contiguous; its gradient equals autograd's of that and is laid out
    like the planes, so that it reaches the backbone output [B, 3*C*D, H, W] without a copy."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone = torch.randn(2, 3 * 4 * 3, 5, 6, dtype=torch.float64).to(memory_format=layout).requires_grad_()
    upstream = torch.randn(2, 5, 6, 3, 3, 4, dtype=torch.float64)
    (ours,) = torch.autograd.grad(
        (trigrid.gather_layout(planes_from_backbone(backbone, 4, 3)) * upstream).sum(), [backbone]
    )
    planes = planes_from_backbone(backbone, 4, 3)
    (reference,) = torch.autograd.grad((planes.permute(0, 4, 5, 1, 3, 2).contiguous() * upstream).sum(), [backbone])
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert ours.stride() == backbone.stride()

    # One tri-grid expanded over the batch: the gradients of both batch entries add up.
    single = backbone[:1].detach().requires_grad_()
    (ours,) = torch.autograd.grad(
        (trigrid.gather_layout(planes_from_backbone(single.expand(2, -1, -1, -1), 4, 3)) * upstream).sum(), [single]
    )
    torch.testing.assert_close(ours, reference.sum(0, keepdim=True))


def test_linear_field_is_interpolated_exactly_at_interior_points(gather_impl):
    box_warp, depth, height, width = 1.0, 3, 8, 10
    matrix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, -2.0, 3.0]])
    offset = torch.tensor([0.0, 0.0, 0.0, 0.25])
    planes = linear_trigrid(matrix, offset, box_warp, depth, height, width)
    # Stay within the span of voxel centres on every axis; the shortest is the 3-slice depth
    # axis, whose centres are at -2/3, 0, 2/3 in normalized units: |p| <= (1 - 1/3) * box_warp/2.
    inner = (1 - 1 / depth) * box_warp / 2
    points = random_points(torch.Generator().manual_seed(0), 2, 300, -inner, inner, torch.float64)
    expected = points @ matrix.T.double() + offset.double()
    for fast in (True, False):
        features = sample_trigrid(planes.expand(2, -1, -1, -1, -1, -1), points, box_warp, fast=fast)
        assert features.shape == (2, 3, 300, 4)
        for plane in range(3):
            torch.testing.assert_close(features[:, plane], expected, atol=1e-12, rtol=0)


def test_zero_padding_outside_the_box(gather_impl):
    planes = torch.ones(1, 3, 2, 3, 4, 4, dtype=torch.float64)
    # Far outside -> 0; on the box face -> half of the border voxel (its centre is half a voxel inside).
    points = torch.tensor([[[5.0, 0.0, 0.0], [0.0, -7.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    for fast in (True, False):
        features = sample_trigrid(planes, points, 1.0, fast=fast)
        np.testing.assert_allclose(features[0, :, 0].numpy(), 0)
        # x = 0.5 is on the W axis of planes 0 and 1 and the D axis of plane 2.
        np.testing.assert_allclose(features[0, :, 2, 0].numpy(), [0.5, 0.5, 0.5])
        np.testing.assert_allclose(features[0, :, 3].numpy(), 1)


def boundary_points(depth, height, width, box_warp, dtype):
    """Points exactly on voxel centres, on voxel faces and on the box faces (plane 0 axes)."""

    def centres(size):
        return ((torch.arange(size, dtype=dtype) + 0.5) * 2 / size - 1) * box_warp / 2

    def faces(size):
        return (torch.arange(size + 1, dtype=dtype) * 2 / size - 1) * box_warp / 2

    values = []
    for size in (width, height, depth):
        values.append(torch.cat([centres(size), faces(size)]))
    grid = torch.stack(torch.meshgrid(*values, indexing='ij'), dim=-1).reshape(1, -1, 3)
    return grid


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fast_sampler_matches_grid_sample_values_and_gradients(dtype, gather_impl):
    generator = torch.Generator().manual_seed(0)
    batch, channels, depth, height, width, box_warp = 2, 5, 3, 6, 7, 0.8
    planes = torch.randn(batch, 3, channels, depth, height, width, generator=generator, dtype=dtype)
    # Inside, outside and straddling the box, plus points exactly on voxel centres and faces.
    points = torch.cat(
        [
            random_points(generator, batch, 400, -0.6, 0.6, dtype),
            boundary_points(depth, height, width, box_warp, dtype).expand(batch, -1, -1),
        ],
        dim=1,
    )
    grad_output = torch.randn(batch, 3, points.shape[1], channels, generator=generator, dtype=dtype)
    results = []
    for fast in (True, False):
        planes_leaf = planes.clone().requires_grad_(True)
        points_leaf = points.clone().requires_grad_(True)
        features = sample_trigrid(planes_leaf, points_leaf, box_warp, fast=fast)
        grads = torch.autograd.grad(features, (planes_leaf, points_leaf), grad_output)
        results.append((features.detach(), *grads))
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    for fast_result, reference in zip(*results):
        torch.testing.assert_close(fast_result, reference, **tolerance)
    assert results[1][2].abs().sum() > 0


def test_fast_sampler_only_planes_or_only_points_need_grad(gather_impl):
    generator = torch.Generator().manual_seed(1)
    planes = torch.randn(1, 3, 2, 3, 4, 5, generator=generator)
    points = random_points(generator, 1, 50, -0.5, 0.5)
    grad_planes_reference = None
    for fast in (True, False):
        planes_leaf = planes.clone().requires_grad_(True)
        (sample_trigrid(planes_leaf, points, 1.0, fast=fast) ** 2).sum().backward()
        if grad_planes_reference is None:
            grad_planes_reference = planes_leaf.grad
        else:
            torch.testing.assert_close(grad_planes_reference, planes_leaf.grad)
    points_leaf = points.clone().requires_grad_(True)
    features = sample_trigrid(planes, points_leaf, 1.0)
    (grad_points,) = torch.autograd.grad(features.sum(), points_leaf)
    assert grad_points.shape == points.shape
    with torch.no_grad():
        assert sample_trigrid(planes, points, 1.0).shape == (1, 3, 50, 2)


def test_gradcheck_fast_sampler(gather_impl):
    generator = torch.Generator().manual_seed(2)
    planes = torch.randn(1, 3, 2, 3, 4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    # Keep points off voxel-centre planes, where the trilinear weights have kinks.
    points = random_points(generator, 1, 12, -0.55, 0.55, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: sample_trigrid(p, q, 1.0, fast=True), (planes, points))


def corner_bag_reference(rows, coordinates, grad_features, height, width, depth):
    """Features and their gradients through the PyTorch ops (embedding_bag over `_corner_bags`, autograd).

    rows [R, C], coordinates [B, P, M, 3], grad_features [B*P*M, C] -> features [B*P*M, C], grad_rows [R, C],
    grad_coordinates [B, P, M, 3]
    """
    rows = rows.clone().requires_grad_(True)
    coordinates = coordinates.clone().requires_grad_(True)
    indices, weights = trigrid._corner_bags(coordinates, height, width, 3, depth)
    features = torch.nn.functional.embedding_bag(indices, rows, per_sample_weights=weights, mode='sum')
    grad_rows, grad_coordinates = torch.autograd.grad(features, (rows, coordinates), grad_features)
    return features.detach(), grad_rows, grad_coordinates


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_fused_gather_and_its_backward_match_the_pytorch_corner_bags(dtype):
    plugin = fused_plugin_or_skip()
    generator = torch.Generator().manual_seed(3)
    batch, channels, depth, height, width = 2, 4, 3, 5, 6
    planes = torch.randn(batch, 3, channels, depth, height, width, generator=generator, dtype=dtype)
    points = torch.cat(
        [
            random_points(generator, batch, 300, -0.7, 0.7, dtype),
            boundary_points(depth, height, width, 1.0, dtype).expand(batch, -1, -1),
        ],
        dim=1,
    )
    points[0, :3] = torch.tensor([[float('nan'), 0, 0], [0, float('inf'), 0], [0, 0, -float('inf')]], dtype=dtype)
    coordinates = trigrid.plane_coordinates(points, 1.0)
    rows = trigrid.gather_layout(planes).reshape(-1, channels)
    grad_features = torch.randn(coordinates.shape[:3].numel(), channels, generator=generator, dtype=dtype)
    expected, _, _ = corner_bag_reference(rows, coordinates, grad_features, height, width, depth)
    finite = torch.isfinite(coordinates).all(dim=-1)
    features = plugin.gather(rows, coordinates, height, width, depth)
    torch.testing.assert_close(features, expected, equal_nan=True)
    assert features[~finite.view(-1)].isnan().all() and not features[finite.view(-1)].isnan().any()

    # The reference's gradients come from the finite points alone (the others moved far outside
    # the box, where they add nothing): PyTorch scatters a non-finite point's NaN weights into rows
    # picked by an undefined integer cast. The fused backward gives such a point NaN gradients
    # and adds NaN to the first row of its volume only.
    _, expected_grad_rows, expected_grad_coordinates = corner_bag_reference(
        rows, torch.where(finite[..., None], coordinates, 5.0), grad_features, height, width, depth
    )
    grad_rows, grad_coordinates = plugin.gather_backward(
        rows, coordinates, grad_features, height, width, depth, True, True
    )
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_coordinates[finite], expected_grad_coordinates[finite], **tolerance)
    assert grad_coordinates[~finite].isnan().all()
    nan_rows = grad_rows.isnan().any(dim=1).nonzero().view(-1).tolist()
    assert nan_rows == [plane * depth for plane in range(3)]  # volumes (0, 0), (0, 1), (0, 2)
    torch.testing.assert_close(grad_rows.where(~grad_rows.isnan(), expected_grad_rows), expected_grad_rows, **tolerance)

    only_rows = plugin.gather_backward(rows, coordinates, grad_features, height, width, depth, True, False)
    only_coordinates = plugin.gather_backward(rows, coordinates, grad_features, height, width, depth, False, True)
    assert torch.equal(only_rows[0].nan_to_num(), grad_rows.nan_to_num()) and only_rows[1].numel() == 0
    assert torch.equal(only_coordinates[1].nan_to_num(), grad_coordinates.nan_to_num())
    assert only_coordinates[0].numel() == 0
