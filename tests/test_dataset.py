"""Tests for training/data/dataset.py: items equal the files written, mirroring, pairing by name,
one clear error per broken dataset, check_dataset, and DataLoader workers over a zip."""

import io
import json
import math
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dnnlib
from training.data.camera_utils import camera_label, orbit_camera
from training.data.dataset import DatasetError, PortraitDataset, check_dataset

N = 4
RES = 16


# ------------------------------------------------------------------------------------------------
# Fixtures built from known arrays.


def encode(array: np.ndarray, fmt: str = 'PNG', **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def make_source(n: int = N, res: int = RES, seed: int = 0) -> dnnlib.EasyDict:
    """Random images and masks, orbit cameras at known angles and random poses."""
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, res, res, 3), dtype=np.uint8)
    masks = (rng.rand(n, res, res) > 0.5).astype(np.uint8) * 255
    horizontal = torch.linspace(0.3, 2.8, n)
    cameras = camera_label(orbit_camera(horizontal, torch.full((n,), 1.4)))
    poses = torch.from_numpy(rng.uniform(-0.4, 0.4, size=(n, 6)).astype(np.float32))
    labels = torch.cat([cameras, poses], dim=1).numpy()
    names = [f'{i // 2:05d}/img{i:08d}.png' for i in range(n)]
    return dnnlib.EasyDict(names=names, images=images, masks=masks, labels=labels)


def image_files(src: dnnlib.EasyDict) -> dict:
    files = {name: encode(image) for name, image in zip(src.names, src.images)}
    files['dataset.json'] = json.dumps(
        {'labels': [[name, label.tolist()] for name, label in zip(src.names, src.labels)]}
    ).encode()
    return files


def mask_files(src: dnnlib.EasyDict, ext: str = '.png', fmt: str = 'PNG') -> dict:
    return {os.path.splitext(name)[0] + ext: encode(mask, fmt) for name, mask in zip(src.names, src.masks)}


def write(root, files: dict, as_zip: bool, order=None) -> str:
    """Write name -> bytes as a folder or a zip (members in `order`, default sorted)."""
    names = order if order is not None else sorted(files)
    if as_zip:
        path = str(root) + '.zip'
        with zipfile.ZipFile(path, 'w') as archive:
            for name in names:
                archive.writestr(name, files[name])
        return path
    for name in names:
        target = os.path.join(root, *name.split('/'))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'wb') as file:
            file.write(files[name])
    return str(root)


def set_labels(files: dict, labels: list) -> None:
    files['dataset.json'] = json.dumps({'labels': labels}).encode()


def labels_of(files: dict) -> list:
    return json.loads(files['dataset.json'])['labels']


# ------------------------------------------------------------------------------------------------
# Items.


@pytest.mark.parametrize('as_zip', [False, True])
def test_items_equal_the_written_files(tmp_path, as_zip):
    src = make_source()
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), as_zip),
        write(tmp_path / 'seg', mask_files(src), as_zip),
        resolution=RES,
    )
    assert len(dataset) == N
    assert dataset.name == 'data'
    assert dataset.resolution == RES and dataset.image_shape == [3, RES, RES] and dataset.num_channels == 3
    assert dataset.label_dim == 25 and dataset.label_shape == [25]
    assert dataset.pose_dim == 6 and dataset.pose_shape == [6]
    assert dataset.has_labels
    for i in range(N):
        image, mask, camera, pose = dataset[i]
        assert image.dtype == np.uint8 and image.shape == (3, RES, RES)
        assert mask.dtype == np.uint8 and mask.shape == (1, RES, RES)
        assert camera.dtype == np.float32 and pose.dtype == np.float32
        np.testing.assert_array_equal(image, src.images[i].transpose(2, 0, 1))
        np.testing.assert_array_equal(mask[0], src.masks[i])
        np.testing.assert_array_equal(camera, src.labels[i, :25])
        np.testing.assert_array_equal(pose, src.labels[i, 25:])
        np.testing.assert_array_equal(dataset.get_label(i), src.labels[i, :25])
        np.testing.assert_array_equal(dataset.get_pose(i), src.labels[i, 25:])
        assert dataset.get_details(i).image_name == src.names[i]


def test_masks_pair_by_name_across_extensions_and_zip_order(tmp_path):
    src = make_source()
    masks = mask_files(src, ext='.jpg', fmt='JPEG')
    # An extra mask that sorts first would shift a pairing by position by one.
    masks['00000/aaa.png'] = encode(np.zeros((RES, RES), np.uint8))
    order = sorted(masks, reverse=True)
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), as_zip=True),
        write(tmp_path / 'seg', masks, as_zip=True, order=order),
    )
    for i, name in enumerate(src.names):
        expected = decode(masks[name.replace('.png', '.jpg')])
        np.testing.assert_array_equal(dataset[i][1][0], expected)
        assert dataset.get_details(i).mask_name == name.replace('.png', '.jpg')


def test_mirrored_items(tmp_path):
    src = make_source()
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), False), write(tmp_path / 'seg', mask_files(src), False), xflip=True
    )
    assert len(dataset) == 2 * N
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    pose_sign = np.array([1, -1, -1, 1, -1, -1], np.float32)
    for i in range(N):
        image, mask, camera, pose = dataset[i]
        flipped_image, flipped_mask, flipped_camera, flipped_pose = dataset[i + N]
        np.testing.assert_array_equal(flipped_image, image[:, :, ::-1])
        np.testing.assert_array_equal(flipped_mask, mask[:, :, ::-1])
        cam2world = camera[:16].reshape(4, 4).astype(np.float64)
        np.testing.assert_allclose(flipped_camera[:16].reshape(4, 4), mirror @ cam2world @ mirror, atol=1e-7)
        np.testing.assert_array_equal(flipped_camera[16:], camera[16:])
        np.testing.assert_array_equal(flipped_pose, pose * pose_sign)
        yaw = math.atan2(camera[3], camera[11])
        assert abs(yaw) > 0.1
        assert math.atan2(flipped_camera[3], flipped_camera[11]) == pytest.approx(-yaw, abs=1e-6)
        np.testing.assert_array_equal(dataset.get_label(i + N), flipped_camera)
        np.testing.assert_array_equal(dataset.get_pose(i + N), flipped_pose)
        assert dataset.get_details(i + N).xflip and dataset.get_details(i + N).raw_idx == i


def test_label_statistics_cover_the_items(tmp_path):
    src = make_source()
    paths = write(tmp_path / 'data', image_files(src), False), write(tmp_path / 'seg', mask_files(src), False)
    plain = PortraitDataset(*paths)
    np.testing.assert_allclose(plain.label_std(), src.labels[:, :25].std(axis=0), atol=1e-6)
    np.testing.assert_allclose(plain.pose_mean(), src.labels[:, 25:].mean(axis=0), atol=1e-6)
    camera_sign = np.ones(25, np.float32)
    camera_sign[[1, 2, 3, 4, 8]] = -1
    both = np.concatenate([src.labels[:, :25], src.labels[:, :25] * camera_sign])
    mirrored = PortraitDataset(*paths, xflip=True)
    np.testing.assert_allclose(mirrored.label_std(), both.std(axis=0), atol=1e-6)
    np.testing.assert_allclose(mirrored.label_mean(), both.mean(axis=0), atol=1e-6)
    assert mirrored.label_mean()[3] == pytest.approx(0.0, abs=1e-6)  # mirrored camera x cancels


def test_max_size_picks_a_seeded_subset(tmp_path):
    src = make_source(n=6)
    paths = write(tmp_path / 'data', image_files(src), False), write(tmp_path / 'seg', mask_files(src), False)
    subset = PortraitDataset(*paths, max_size=3, random_seed=5, xflip=True)
    again = PortraitDataset(*paths, max_size=3, random_seed=5)
    assert len(subset) == 6 and len(again) == 3
    picked = [subset.get_details(i).raw_idx for i in range(3)]
    assert picked == sorted(picked) and len(set(picked)) == 3
    assert picked == [again.get_details(i).raw_idx for i in range(3)]
    for i, raw in enumerate(picked):
        np.testing.assert_array_equal(subset[i][0], src.images[raw].transpose(2, 0, 1))
        np.testing.assert_array_equal(subset[i][2], src.labels[raw, :25])
    assert len(PortraitDataset(*paths, max_size=100)) == 6


def test_without_labels(tmp_path):
    src = make_source()
    files = image_files(src)
    del files['dataset.json']
    dataset = PortraitDataset(
        write(tmp_path / 'data', files, False), write(tmp_path / 'seg', mask_files(src), False), use_labels=False
    )
    assert not dataset.has_labels
    image, _, camera, pose = dataset[1]
    np.testing.assert_array_equal(image, src.images[1].transpose(2, 0, 1))
    assert camera.shape == (25,) and not camera.any() and pose.shape == (6,) and not pose.any()


def test_wrong_resolution(tmp_path):
    src = make_source()
    with pytest.raises(DatasetError, match=r'data: images are 16x16, but resolution 32'):
        PortraitDataset(
            write(tmp_path / 'data', image_files(src), False),
            write(tmp_path / 'seg', mask_files(src), False),
            resolution=32,
        )


# ------------------------------------------------------------------------------------------------
# One broken fixture per validation error.


def _drop_label(images, masks, src):
    set_labels(images, [entry for entry in labels_of(images) if entry[0] != src.names[1]])


def _set_label(index, value):
    def mutate(images, masks, src):
        entries = labels_of(images)
        entries[index][1] = value(np.array(entries[index][1]))
        images['dataset.json'] = json.dumps({'labels': entries}).encode()  # writes NaN/Infinity tokens

    return mutate


def _scale_rotation(label):
    label[[0, 4, 8]] *= 1.1
    return label.tolist()


def _reflect(label):
    label[[0, 4, 8]] *= -1
    return label.tolist()


def _bad_last_row(label):
    label[12] = 0.5
    return label.tolist()


def _smaller_pair(images, masks, src):
    images[src.names[3]] = encode(src.images[3][:8, :8])
    masks['00001/img00000003.png'] = encode(src.masks[3][:8, :8])


def _non_square_pair(images, masks, src):
    images[src.names[1]] = encode(src.images[1][:12])
    masks['00000/img00000001.png'] = encode(src.masks[1][:12])


def _replace(name_of, data_of, in_masks=False):
    def mutate(images, masks, src):
        target = masks if in_masks else images
        target[name_of(src)] = data_of(src)

    return mutate


BROKEN = {
    'missing dataset.json': (
        lambda images, masks, src: images.pop('dataset.json'),
        r'data(\.zip)?: dataset\.json is missing',
    ),
    'image without label': (_drop_label, r"dataset\.json: image '00000/img00000001\.png' has no label"),
    'label without image': (
        lambda images, masks, src: images.pop(src.names[2]),
        r"dataset\.json: label for '00001/img00000002\.png' has no image file",
    ),
    'duplicate label': (
        lambda images, masks, src: set_labels(images, labels_of(images) + labels_of(images)[:1]),
        r"image '00000/img00000000\.png' is labelled twice",
    ),
    'label length': (
        _set_label(1, lambda label: label[:29].tolist()),
        re.escape("dataset.json: image '00000/img00000001.png' has 29 label values, expected 31 (25 camera + 6 pose)"),
    ),
    'label NaN': (
        _set_label(2, lambda label: [float('nan')] + label[1:].tolist()),
        r"dataset\.json: image '00001/img00000002\.png' has non-finite label values .* \[0\]",
    ),
    'label inf': (
        _set_label(3, lambda label: label[:30].tolist() + [float('inf')]),
        r"dataset\.json: image '00001/img00000003\.png' has non-finite label values .* \[30\]",
    ),
    'label not numbers': (_set_label(0, lambda label: ['a'] * 31), r"image '00000/img00000000\.png' has non-numeric"),
    'rotation not orthonormal': (
        _set_label(1, _scale_rotation),
        r"image '00000/img00000001\.png' has a cam2world .* not orthonormal",
    ),
    'rotation is a reflection': (
        _set_label(1, _reflect),
        r"image '00000/img00000001\.png' has a cam2world .* determinant -1",
    ),
    'last row': (_set_label(1, _bad_last_row), r"image '00000/img00000001\.png' has a cam2world .* last row"),
    'non-square image': (_non_square_pair, r'img00000001\.png: image is 16x12, expected a square image'),
    'image of another size': (_smaller_pair, r'img00000003\.png: image is 8x8, but 3 other images are 16x16'),
    'image not RGB': (
        _replace(lambda src: src.names[0], lambda src: encode(np.dstack([src.images[0], src.masks[0]]))),
        r"img00000000\.png: image mode 'RGBA', expected 'RGB'",
    ),
    'unreadable image': (
        _replace(lambda src: src.names[2], lambda src: b'not an image at all'),
        r'img00000002\.png: cannot be read as an image',
    ),
    'missing mask': (
        lambda images, masks, src: masks.pop('00000/img00000001.png'),
        r"seg(\.zip)?: no mask for image '00000/img00000001\.png'",
    ),
    'two masks': (
        _replace(lambda src: '00000/img00000001.bmp', lambda src: encode(src.masks[1], 'BMP'), in_masks=True),
        r"image '00000/img00000001\.png' has several masks",
    ),
    'mask of another size': (
        _replace(lambda src: '00000/img00000001.png', lambda src: encode(src.masks[1][:8, :8]), in_masks=True),
        r"seg(\.zip)?[/\\]00000[/\\]img00000001\.png: mask is 8x8 but its image '00000/img00000001\.png' is 16x16",
    ),
    'mask not single-channel': (
        _replace(lambda src: '00001/img00000002.png', lambda src: encode(src.images[2]), in_masks=True),
        r"seg(\.zip)?[/\\]00001[/\\]img00000002\.png: mask mode 'RGB', expected single-channel",
    ),
    'unreadable mask': (
        _replace(lambda src: '00001/img00000003.png', lambda src: b'\x89PNG garbage', in_masks=True),
        r'seg(\.zip)?[/\\]00001[/\\]img00000003\.png: cannot be read as an image',
    ),
}


@pytest.mark.parametrize('as_zip', [False, True], ids=['folder', 'zip'])
@pytest.mark.parametrize('case', sorted(BROKEN))
def test_each_broken_dataset_gives_one_clear_error(tmp_path, case, as_zip):
    src = make_source()
    images, masks = image_files(src), mask_files(src)
    mutate, pattern = BROKEN[case]
    mutate(images, masks, src)
    data, seg = write(tmp_path / 'data', images, as_zip), write(tmp_path / 'seg', masks, as_zip)
    with pytest.raises(DatasetError, match=pattern) as raised:
        PortraitDataset(data, seg)
    message = str(raised.value)
    assert '\n' not in message
    assert 'problems in dataset' not in message  # each fixture breaks exactly one thing
    assert check_dataset(data, seg) == [message]


def test_non_zip_named_zip(tmp_path):
    src = make_source()
    fake = tmp_path / 'data.zip'
    fake.write_bytes(b'this is plain text, not an archive')
    with pytest.raises(DatasetError, match=r'data\.zip: not a zip archive'):
        PortraitDataset(str(fake), write(tmp_path / 'seg', mask_files(src), False))
    with pytest.raises(DatasetError, match=r'missing\.zip: no such file or folder'):
        PortraitDataset(str(tmp_path / 'missing.zip'), write(tmp_path / 'seg2', mask_files(src), False))


@pytest.mark.parametrize('as_zip', [False, True], ids=['folder', 'zip'])
def test_empty_dataset(tmp_path, as_zip):
    files = {'dataset.json': json.dumps({'labels': []}).encode()}
    data = write(tmp_path / 'data', files, as_zip)
    seg = write(tmp_path / 'seg', {'readme.txt': b'no masks'}, as_zip)
    with pytest.raises(DatasetError, match=r'data(\.zip)?: no images found'):
        PortraitDataset(data, seg)


@pytest.mark.parametrize('as_zip', [False, True], ids=['folder', 'zip'])
def test_truncated_image_fails_when_read_and_in_check(tmp_path, as_zip):
    src = make_source()
    images = image_files(src)
    images[src.names[2]] = images[src.names[2]][: len(images[src.names[2]]) // 2]
    data, seg = write(tmp_path / 'data', images, as_zip), write(tmp_path / 'seg', mask_files(src), as_zip)
    dataset = PortraitDataset(data, seg)  # headers are intact; decoding is what fails
    np.testing.assert_array_equal(dataset[1][0], src.images[1].transpose(2, 0, 1))
    with pytest.raises(DatasetError, match=r'img00000002\.png: cannot be decoded, the file is damaged or truncated'):
        dataset[2]
    problems = check_dataset(data, seg)
    assert len(problems) == 1 and re.search(r'img00000002\.png: cannot be decoded', problems[0])


def test_check_lists_every_problem(tmp_path):
    src = make_source(n=6)
    images, masks = image_files(src), mask_files(src)
    _set_label(0, lambda label: label[:30].tolist())(images, masks, src)
    del masks['00001/img00000003.png']
    images[src.names[4]] = images[src.names[4]][:60]
    images[src.names[5]] = encode(src.images[5][:10])
    masks['00002/img00000005.png'] = encode(src.masks[5][:10])
    data, seg = write(tmp_path / 'data', images, True), write(tmp_path / 'seg', masks, True)
    problems = check_dataset(data, seg)
    expected = [
        r"image '00000/img00000000\.png' has 30 label values",
        r"no mask for image '00001/img00000003\.png'",
        r'img00000004\.png: cannot be decoded',
        r'img00000005\.png: image is 16x10',
    ]
    assert len(problems) == len(expected)
    for pattern in expected:
        assert sum(bool(re.search(pattern, problem)) for problem in problems) == 1, pattern
    # Construction reads headers only: the truncated file is not among its problems.
    with pytest.raises(
        DatasetError,
        match=r'^3 problems in dataset .*has 30 label values.*'
        r'python dataset_tool\.py check --data',
    ) as raised:
        PortraitDataset(data, seg)
    assert '\n' not in str(raised.value)


# ------------------------------------------------------------------------------------------------
# Worker safety.


def test_dataloader_workers_match_direct_indexing(tmp_path):
    src = make_source(n=5, res=8)
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), True), write(tmp_path / 'seg', mask_files(src), True), xflip=True
    )
    direct = [dataset[i] for i in range(len(dataset))]  # the parent holds open handles before the fork
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False, num_workers=2)
    batches = list(loader)
    assert [batch[0].shape[0] for batch in batches] == [3, 3, 3, 1]
    for part in range(4):
        expected = torch.from_numpy(np.stack([item[part] for item in direct]))
        assert torch.equal(torch.cat([batch[part] for batch in batches]), expected)
    assert isinstance(batches[0][0], torch.Tensor) and batches[0][0].dtype == torch.uint8


def test_pickled_dataset_reopens_its_zip(tmp_path):
    src = make_source()
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), True), write(tmp_path / 'seg', mask_files(src), True)
    )
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    for i in range(N):
        for ours, theirs in zip(dataset[i], copy[i]):
            np.testing.assert_array_equal(ours, theirs)
    dataset.close()
    np.testing.assert_array_equal(copy[3][1][0], src.masks[3])


def test_png_decoder_output_layouts(tmp_path, monkeypatch):
    # pyspng, when installed, returns [H, W] for grayscale and [H, W, 3] for RGB; a stand-in with
    # that contract checks the reshaping around it whether or not pyspng is present here.
    import training.data.dataset as dataset_module

    class StandIn:
        calls = 0

        @classmethod
        def load(cls, data: bytes) -> np.ndarray:
            cls.calls += 1
            return decode(data)

    monkeypatch.setattr(dataset_module, 'pyspng', StandIn)
    src = make_source()
    dataset = PortraitDataset(
        write(tmp_path / 'data', image_files(src), True), write(tmp_path / 'seg', mask_files(src), True)
    )
    image, mask, _, _ = dataset[2]
    assert StandIn.calls == 2
    np.testing.assert_array_equal(image, src.images[2].transpose(2, 0, 1))
    np.testing.assert_array_equal(mask, src.masks[2][np.newaxis])
