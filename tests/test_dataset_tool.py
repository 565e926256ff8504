"""Tests for dataset_tool.py: convert a small source in the documented layout, load the result with
PortraitDataset, check clean and broken datasets, and click errors for bad options and sources."""

import io
import json
import os
import re
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import dataset_tool
from training.data.camera_utils import camera_label, orbit_camera
from training.data.dataset import PortraitDataset

OUT = 8
CENTRE = [(200, 40, 10), (10, 220, 90), (60, 60, 250)]  # colour of each image's central square
BORDER = (5, 5, 5)  # colour outside it


def png(array: np.ndarray, fmt: str = 'PNG') -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def make_layout(root, as_zip=False, mask_dir='masks', mask_ext='.png'):
    """Three non-square portraits (wide, tall, wide) whose central square is one colour and whose
    sides another, masks that are 255 exactly on the central square, and labels listed in an
    order other than the sorted one (one with an 'images/' prefix)."""
    names = ['b/person1.png', 'a/person0.png', 'person2.png']
    sizes = [(24, 16), (16, 24), (20, 12)]  # (width, height)
    files, labels = {}, {}
    cameras = camera_label(orbit_camera(torch.tensor([0.5, 1.5, 2.5]), torch.tensor([1.3, 1.6, 1.5])))
    poses = torch.linspace(-0.3, 0.3, 18).reshape(3, 6)
    for i, (name, (width, height)) in enumerate(zip(names, sizes)):
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = np.empty((height, width, 3), np.uint8)
        image[:] = BORDER
        image[top : top + side, left : left + side] = CENTRE[i]
        mask = np.zeros((height, width), np.uint8)
        mask[top : top + side, left : left + side] = 255
        files['images/' + name] = png(image)
        files[f'{mask_dir}/' + os.path.splitext(name)[0] + mask_ext] = png(
            mask, 'JPEG' if mask_ext == '.jpg' else 'PNG'
        )
        labels[name] = torch.cat([cameras[i], poses[i]]).tolist()
    entries = [[('images/' + name) if name == 'person2.png' else name, labels[name]] for name in names]
    files['dataset.json'] = json.dumps({'labels': entries}).encode()
    if as_zip:
        path = str(root) + '.zip'
        with zipfile.ZipFile(path, 'w') as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path, labels
    for name, data in files.items():
        target = os.path.join(root, *name.split('/'))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'wb') as file:
            file.write(data)
    return str(root), labels


SORTED = ['a/person0.png', 'b/person1.png', 'person2.png']
COLOUR_OF = {'a/person0.png': CENTRE[1], 'b/person1.png': CENTRE[0], 'person2.png': CENTRE[2]}


def run(*args):
    return CliRunner().invoke(dataset_tool.main, [str(arg) for arg in args])


def assert_click_error(result, code, pattern):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert 'Traceback' not in result.output
    assert re.search(pattern, result.output), result.output


# ------------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize('dest_ext', ['.zip', ''], ids=['zip', 'folder'])
@pytest.mark.parametrize('transform', ['center-crop', 'resize'])
def test_convert_loads_at_the_resolution_with_labels_in_order(tmp_path, transform, dest_ext):
    source, labels = make_layout(tmp_path / 'source')
    dest, seg = str(tmp_path / f'out{dest_ext}'), str(tmp_path / f'out-seg{dest_ext}')
    result = run(
        'convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT, '--transform', transform
    )
    assert result.exit_code == 0, result.output
    assert 'were not square' in result.output

    dataset = PortraitDataset(dest, seg, resolution=OUT)
    assert len(dataset) == 3
    for i, source_name in enumerate(SORTED):
        image, mask, camera, pose = dataset[i]
        assert dataset.get_details(i).image_name == f'00000/img{i:08d}.png'
        assert dataset.get_details(i).mask_name == f'00000/img{i:08d}.png'
        np.testing.assert_array_equal(camera, np.float32(labels[source_name][:25]))
        np.testing.assert_array_equal(pose, np.float32(labels[source_name][25:]))
        centre = np.array(COLOUR_OF[source_name])
        if transform == 'center-crop':
            # The crop is exactly the central square: one colour and a full mask.
            assert np.abs(image.astype(int) - centre[:, None, None]).max() <= 1
            assert (mask == 255).all()
        else:
            # Squeezing keeps the sides: the border colour and an empty mask reach the edge.
            wide = source_name != 'a/person0.png'
            edge = (image[:, :, 0], mask[0, :, 0]) if wide else (image[:, 0, :], mask[0, 0, :])
            assert np.abs(edge[0].astype(int).mean(axis=1) - np.array(BORDER)).max() < 40
            assert edge[1].max() < 128
            assert np.abs(image[:, OUT // 2, OUT // 2].astype(int) - centre).max() <= 6
            assert mask[0, OUT // 2, OUT // 2] >= 245  # Lanczos rings a little at the squeezed edge

    with (
        zipfile.ZipFile(dest).open('dataset.json') if dest_ext else open(os.path.join(dest, 'dataset.json'), 'rb')
    ) as file:
        document = json.load(file)
    assert [entry[0] for entry in document['labels']] == [f'00000/img{i:08d}.png' for i in range(3)]
    assert [entry[1] for entry in document['labels']] == [labels[name] for name in SORTED]
    assert list(document['source_names'].values()) == ['images/' + name for name in SORTED]
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_convert_zip_source_with_seg_masks_and_max_images(tmp_path):
    source, labels = make_layout(tmp_path / 'source', as_zip=True, mask_dir='seg', mask_ext='.jpg')
    dest, seg = tmp_path / 'out.zip', tmp_path / 'seg.zip'
    result = run(
        'convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT, '--max-images', 2
    )
    assert result.exit_code == 0, result.output
    dataset = PortraitDataset(str(dest), str(seg), resolution=OUT, xflip=True)
    assert len(dataset) == 4
    for i, name in enumerate(SORTED[:2]):
        np.testing.assert_array_equal(dataset.get_label(i), np.float32(labels[name][:25]))
    # JPEG masks come out nearly, not exactly, 255 on the central square.
    assert dataset[0][1].min() > 240
    with zipfile.ZipFile(dest) as archive:
        assert sorted(archive.namelist()) == ['00000/img00000000.png', '00000/img00000001.png', 'dataset.json']


def test_convert_replaces_an_existing_zip_only_on_success(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    dest, seg = tmp_path / 'out.zip', tmp_path / 'seg.zip'
    dest.write_bytes(b'previous')
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT)
    assert_click_error(result, 2, r'out\.zip exists; add --overwrite')
    os.remove(os.path.join(source, 'masks', 'b', 'person1.png'))
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT, '--overwrite')
    assert_click_error(result, 1, r"1 images have no mask under 'masks/'.*b/person1\.png")
    assert dest.read_bytes() == b'previous' and not seg.exists()

    # A file that fails to decode half-way leaves nothing behind either.
    with open(os.path.join(source, 'images', 'b', 'person1.png'), 'r+b') as file:
        file.truncate(60)
    with open(os.path.join(source, 'masks', 'b', 'person1.png'), 'wb') as file:
        file.write(png(np.zeros((16, 24), np.uint8)))
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT, '--overwrite')
    assert_click_error(result, 1, r'images/b/person1\.png: cannot be read as an image')
    assert dest.read_bytes() == b'previous' and not seg.exists()
    assert sorted(os.listdir(tmp_path)) == ['out.zip', 'source']


def test_convert_source_problems_are_click_errors(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    out = ['--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip', '--resolution', OUT]
    assert_click_error(
        run('convert', '--source', source, '--images-dir', 'pictures', *out),
        1,
        r"no images under 'pictures/'; pass --images-dir",
    )
    assert_click_error(
        run('convert', '--source', source, '--masks-dir', 'segmentation', *out),
        1,
        r"3 images have no mask under 'segmentation/'",
    )

    document = json.loads(open(os.path.join(source, 'dataset.json')).read())
    document['labels'] = document['labels'][1:]
    with open(os.path.join(source, 'dataset.json'), 'w') as file:
        json.dump(document, file)
    assert_click_error(
        run('convert', '--source', source, *out), 1, r'dataset\.json: 1 images have no label: b/person1\.png'
    )

    document['labels'][0][1] = document['labels'][0][1][:30]
    with open(os.path.join(source, 'dataset.json'), 'w') as file:
        json.dump(document, file)
    assert_click_error(
        run('convert', '--source', source, *out), 1, r"image 'a/person0\.png' has 30 label values, expected 31"
    )

    os.remove(os.path.join(source, 'dataset.json'))
    assert_click_error(run('convert', '--source', source, *out), 1, r'source: dataset\.json is missing')
    assert not (tmp_path / 'o.zip').exists()


def make_aligned_layout(root, count=3, seed=0):
    """The published pipeline's output: aligned_images/, mask/ (JPEG, other extension) and result.json
    keyed by file name, with random rigid cameras and 72-value SMPL poses. -> (root, result)"""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    os.makedirs(root / 'aligned_images')
    os.makedirs(root / 'mask')
    result = {}
    for i in range(count):
        name = f'photo{i}.png'
        image = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
        mask = np.zeros((20, 20), np.uint8)
        mask[4:16, 5 + i : 15] = 255
        (root / 'aligned_images' / name).write_bytes(png(image))
        (root / 'mask' / f'photo{i}.jpg').write_bytes(png(mask, 'JPEG'))
        cam2world = np.eye(4)
        cam2world[:3, :3] = Rotation.random(random_state=seed + i).as_matrix()
        cam2world[:3, 3] = rng.normal(size=3)
        result[name] = {
            'camera_pose': cam2world.tolist(),
            'smpl_pose': rng.normal(scale=0.3, size=72).tolist(),
            'other': 'ignored',
        }
    (root / 'result.json').write_text(json.dumps(result))
    return str(root), result


def test_convert_reads_the_published_pipelines_layout(tmp_path):
    source, result = make_aligned_layout(tmp_path / 'aligned')
    dest, seg = tmp_path / 'out.zip', tmp_path / 'seg.zip'
    assert run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT).exit_code == 0
    with zipfile.ZipFile(dest) as archive:
        document = json.loads(archive.read('dataset.json'))
    focal = 6.5104166
    for i, (name, label) in enumerate(document['labels']):
        entry = result[f'photo{i}.png']
        # By hand: row-major cam2world, then normalized intrinsics, then joints 12 and 15 of smpl_pose.
        expected = (
            np.asarray(entry['camera_pose']).reshape(-1).tolist()
            + [focal, 0, 0.5, 0, focal, 0.5, 0, 0, 1]
            + entry['smpl_pose'][36:39]
            + entry['smpl_pose'][45:48]
        )
        np.testing.assert_allclose(label, expected, rtol=0, atol=1e-12)
    # Masks are resized with Lanczos filtering, like the images.
    with zipfile.ZipFile(seg) as archive:
        stored = np.asarray(Image.open(io.BytesIO(archive.read('00000/img00000001.png'))))
    original = Image.open(os.path.join(source, 'mask', 'photo1.jpg')).convert('L')
    np.testing.assert_array_equal(stored, np.asarray(original.resize((OUT, OUT), Image.Resampling.LANCZOS)))
    dataset = PortraitDataset(str(dest), str(seg), resolution=OUT)
    assert len(dataset) == 3
    np.testing.assert_array_equal(dataset[2][3][3:], np.float32(result['photo2.png']['smpl_pose'][45:48]))


def test_aligned_layout_problems_are_click_errors(tmp_path):
    source, result = make_aligned_layout(tmp_path / 'aligned')
    out = ['--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip', '--resolution', OUT]
    entry = result.pop('photo1.png')
    (tmp_path / 'aligned' / 'result.json').write_text(json.dumps(result))
    assert_click_error(
        run('convert', '--source', source, *out), 1, r'result\.json: 1 images have no entry: photo1\.png'
    )
    result['photo1.png'] = dict(entry, smpl_pose=entry['smpl_pose'][:69])
    (tmp_path / 'aligned' / 'result.json').write_text(json.dumps(result))
    assert_click_error(
        run('convert', '--source', source, *out),
        1,
        r"'photo1\.png' needs a 4x4 camera_pose and 72 smpl_pose values, got 4x4 and 69",
    )
    result['photo1.png'] = dict(entry, camera_pose=(2 * np.eye(4)).tolist())
    (tmp_path / 'aligned' / 'result.json').write_text(json.dumps(result))
    assert_click_error(
        run('convert', '--source', source, *out), 1, r"'photo1\.png' has a cam2world .* not a rigid transform"
    )
    result['photo1.png'] = entry
    (tmp_path / 'aligned' / 'result.json').write_text(json.dumps(result))
    os.remove(tmp_path / 'aligned' / 'mask' / 'photo2.jpg')
    assert_click_error(
        run('convert', '--source', source, *out), 1, r"1 images have no single mask under 'mask/'.*photo2\.png"
    )
    assert not (tmp_path / 'o.zip').exists()


def test_convert_flat_folder_with_separate_masks_and_camera_only_labels(tmp_path):
    # A flat folder of photos with an EG3D-style dataset.json (25 values), masks in a folder of their own.
    source, labels = make_layout(tmp_path / 'source')
    flat, masks = tmp_path / 'photos', tmp_path / 'masks'
    os.makedirs(flat)
    os.rename(os.path.join(source, 'masks'), masks)
    entries = []
    for name in SORTED:
        os.makedirs(os.path.dirname(flat / name), exist_ok=True)
        os.rename(os.path.join(source, 'images', name), flat / name)
        entries.append([name, labels[name][:25]])
    (flat / 'dataset.json').write_text(json.dumps({'labels': entries}))
    dest, seg = tmp_path / 'out', tmp_path / 'out-seg'
    result = run(
        'convert',
        '--source',
        flat,
        '--images-dir',
        '.',
        '--masks',
        masks,
        '--dest',
        dest,
        '--seg-dest',
        seg,
        '--resolution',
        OUT,
    )
    assert result.exit_code == 0, result.output
    assert 'note: 3 labels have 25 camera values and no body pose; their pose is set to zero' in result.output
    dataset = PortraitDataset(str(dest), str(seg), resolution=OUT)
    for i, name in enumerate(SORTED):
        _, mask, camera, pose = dataset[i]
        np.testing.assert_array_equal(camera, np.float32(labels[name][:25]))
        assert not pose.any() and (mask == 255).all()
    # An existing, non-empty destination folder is replaced only with --overwrite.
    again = [
        'convert',
        '--source',
        flat,
        '--images-dir',
        '.',
        '--masks',
        masks,
        '--dest',
        dest,
        '--seg-dest',
        seg,
        '--resolution',
        OUT,
    ]
    assert_click_error(run(*again), 2, r'out is a folder that is not empty; add --overwrite')
    assert run(*again, '--overwrite').exit_code == 0
    assert len(PortraitDataset(str(dest), str(seg), resolution=OUT)) == 3


def test_bad_options_are_usage_errors(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    full = ['--source', source, '--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip']
    assert_click_error(
        run('convert', *full, '--resolution', OUT, '--transform', 'stretch'), 2, r"Invalid value for '--transform'"
    )
    assert_click_error(run('convert', *full, '--resolution', 0), 2, r"Invalid value for '--resolution'")
    assert_click_error(
        run('convert', *full, '--resolution', OUT, '--max-images', 0), 2, r"Invalid value for '--max-images'"
    )
    assert_click_error(run('convert', *full), 2, r"Missing option '--resolution'")
    assert_click_error(
        run(
            'convert',
            '--source',
            tmp_path / 'nowhere',
            '--dest',
            tmp_path / 'o.zip',
            '--seg-dest',
            tmp_path / 's.zip',
            '--resolution',
            OUT,
        ),
        2,
        r"'--source'.*does not exist",
    )
    assert_click_error(
        run(
            'convert',
            '--source',
            source,
            '--dest',
            tmp_path / 'o.zip',
            '--seg-dest',
            tmp_path / 'o.zip',
            '--resolution',
            OUT,
        ),
        2,
        r'--seg-dest.*must differ from --dest',
    )
    assert_click_error(
        run('convert', '--source', source, '--dest', source, '--seg-dest', tmp_path / 's.zip', '--resolution', OUT),
        2,
        r'--dest.*must differ from --source',
    )
    fake = tmp_path / 'fake.zip'
    fake.write_bytes(b'not a zip')
    assert_click_error(
        run(
            'convert',
            '--source',
            fake,
            '--dest',
            tmp_path / 'o.zip',
            '--seg-dest',
            tmp_path / 's.zip',
            '--resolution',
            OUT,
        ),
        2,
        r'fake\.zip: not a zip archive',
    )
    assert not (tmp_path / 'o.zip').exists()


# ------------------------------------------------------------------------------------------------
# check


def test_check_clean_and_broken(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    dest, seg = tmp_path / 'out', tmp_path / 'seg'
    assert run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT).exit_code == 0

    result = run('check', '--data', dest, '--seg-data', seg, '--no-progress')
    assert result.exit_code == 0, result.output
    assert f'OK, 3 images {OUT}x{OUT}' in result.output

    os.remove(seg / '00000' / 'img00000001.png')
    damaged = dest / '00000' / 'img00000002.png'
    with open(damaged, 'r+b') as file:
        file.truncate(os.path.getsize(damaged) // 2)
    result = run('check', '--data', dest, '--seg-data', seg, '--no-progress')
    assert_click_error(result, 1, r"no mask for image '00000/img00000001\.png'")
    assert re.search(r'img00000002\.png: cannot be (read as an image|decoded)', result.output)
    assert '2 problems found' in result.output

    assert_click_error(run('check', '--data', tmp_path / 'nowhere', '--seg-data', seg), 2, r"'--data'.*does not exist")


@pytest.mark.parametrize('value', [1e308, -1e39, 10**400], ids=['1e308', '-1e39', 'int 10^400'])
def test_a_label_value_that_overflows_float32_names_the_image_and_the_field(tmp_path, value):
    """Finite in JSON (and float64), not in float32: check and the loader refuse it as the bad label it is."""
    from training.data.dataset import DatasetError

    source, _ = make_layout(tmp_path / 'source')
    dest, seg = tmp_path / 'out', tmp_path / 'seg'
    assert run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT).exit_code == 0
    document = json.loads((dest / 'dataset.json').read_text())
    name, label = document['labels'][1]
    label[16] = value  # intrinsics[0][0], the focal length
    (dest / 'dataset.json').write_text(json.dumps({'labels': document['labels']}))
    expected = f"image '{name}' has non-finite label values"
    result = run('check', '--data', dest, '--seg-data', seg, '--no-progress')
    assert result.exit_code == 1 and 'OK' not in result.output and 'Traceback' not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert lines == [lines[0], '1 problems found'] and expected in lines[0], result.output
    assert 'at positions [16]: intrinsics[0][0] (fx, the focal length) = ' in lines[0]
    with pytest.raises(DatasetError) as raised:
        PortraitDataset(str(dest), str(seg))
    assert str(raised.value) == lines[0]
