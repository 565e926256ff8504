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
from training.camera_utils import camera_label, orbit_camera
from training.dataset import PortraitDataset

OUT = 8
CENTRE = [(200, 40, 10), (10, 220, 90), (60, 60, 250)]   # colour of each image's central square
BORDER = (5, 5, 5)                                          # colour outside it


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
        image[top:top + side, left:left + side] = CENTRE[i]
        mask = np.zeros((height, width), np.uint8)
        mask[top:top + side, left:left + side] = 255
        files['images/' + name] = png(image)
        files[f'{mask_dir}/' + os.path.splitext(name)[0] + mask_ext] = png(mask, 'JPEG' if mask_ext == '.jpg' else 'PNG')
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
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg,
                 '--resolution', OUT, '--transform', transform)
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
            assert mask[0, OUT // 2, OUT // 2] == 255

    with (zipfile.ZipFile(dest).open('dataset.json') if dest_ext else open(os.path.join(dest, 'dataset.json'), 'rb')) as file:
        document = json.load(file)
    assert [entry[0] for entry in document['labels']] == [f'00000/img{i:08d}.png' for i in range(3)]
    assert [entry[1] for entry in document['labels']] == [labels[name] for name in SORTED]
    assert list(document['source_names'].values()) == ['images/' + name for name in SORTED]
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_convert_zip_source_with_seg_masks_and_max_images(tmp_path):
    source, labels = make_layout(tmp_path / 'source', as_zip=True, mask_dir='seg', mask_ext='.jpg')
    dest, seg = tmp_path / 'out.zip', tmp_path / 'seg.zip'
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT,
                 '--max-images', 2)
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
    os.remove(os.path.join(source, 'masks', 'b', 'person1.png'))
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT)
    assert_click_error(result, 1, r"1 images have no mask under 'masks/'.*b/person1\.png")
    assert dest.read_bytes() == b'previous' and not seg.exists()

    # A file that fails to decode half-way leaves nothing behind either.
    with open(os.path.join(source, 'images', 'b', 'person1.png'), 'r+b') as file:
        file.truncate(60)
    with open(os.path.join(source, 'masks', 'b', 'person1.png'), 'wb') as file:
        file.write(png(np.zeros((16, 24), np.uint8)))
    result = run('convert', '--source', source, '--dest', dest, '--seg-dest', seg, '--resolution', OUT)
    assert_click_error(result, 1, r'images/b/person1\.png: cannot be read as an image')
    assert dest.read_bytes() == b'previous' and not seg.exists()
    assert sorted(os.listdir(tmp_path)) == ['out.zip', 'source']


def test_convert_source_problems_are_click_errors(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    out = ['--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip', '--resolution', OUT]
    assert_click_error(run('convert', '--source', source, '--images-dir', 'pictures', *out), 1,
                       r"no images under 'pictures/'; pass --images-dir")
    assert_click_error(run('convert', '--source', source, '--masks-dir', 'segmentation', *out), 1,
                       r"3 images have no mask under 'segmentation/'")

    document = json.loads(open(os.path.join(source, 'dataset.json')).read())
    document['labels'] = document['labels'][1:]
    with open(os.path.join(source, 'dataset.json'), 'w') as file:
        json.dump(document, file)
    assert_click_error(run('convert', '--source', source, *out), 1,
                       r'dataset\.json: 1 images have no label: b/person1\.png')

    document['labels'][0][1] = document['labels'][0][1][:30]
    with open(os.path.join(source, 'dataset.json'), 'w') as file:
        json.dump(document, file)
    assert_click_error(run('convert', '--source', source, *out), 1,
                       r"image 'a/person0\.png' has 30 label values, expected 31")

    os.remove(os.path.join(source, 'dataset.json'))
    assert_click_error(run('convert', '--source', source, *out), 1, r'source: dataset\.json is missing')
    assert not (tmp_path / 'o.zip').exists()


def test_bad_options_are_usage_errors(tmp_path):
    source, _ = make_layout(tmp_path / 'source')
    full = ['--source', source, '--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip']
    assert_click_error(run('convert', *full, '--resolution', OUT, '--transform', 'stretch'), 2, r"Invalid value for '--transform'")
    assert_click_error(run('convert', *full, '--resolution', 0), 2, r"Invalid value for '--resolution'")
    assert_click_error(run('convert', *full, '--resolution', OUT, '--max-images', 0), 2, r"Invalid value for '--max-images'")
    assert_click_error(run('convert', *full), 2, r"Missing option '--resolution'")
    assert_click_error(run('convert', '--source', tmp_path / 'nowhere', '--dest', tmp_path / 'o.zip',
                           '--seg-dest', tmp_path / 's.zip', '--resolution', OUT), 2, r"'--source'.*does not exist")
    assert_click_error(run('convert', '--source', source, '--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 'o.zip',
                           '--resolution', OUT), 2, r"--seg-dest.*must differ from --dest")
    assert_click_error(run('convert', '--source', source, '--dest', source, '--seg-dest', tmp_path / 's.zip',
                           '--resolution', OUT), 2, r"--dest.*must differ from --source")
    fake = tmp_path / 'fake.zip'
    fake.write_bytes(b'not a zip')
    assert_click_error(run('convert', '--source', fake, '--dest', tmp_path / 'o.zip', '--seg-dest', tmp_path / 's.zip',
                           '--resolution', OUT), 2, r'fake\.zip: not a zip archive')
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
