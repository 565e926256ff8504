"""Tests for dnnlib/util.py."""

import os
import pathlib
import sys

import pytest

from dnnlib import util

UNREACHABLE_URL = 'http://127.0.0.1:9/x.pkl'  # the discard port: nothing listens there


def test_easydict_attribute_access():
    d = util.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2}
    assert d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing


@pytest.mark.parametrize(
    'spec, expected',
    [
        ('1,3-5,10', [1, 3, 4, 5, 10]),
        ('7', [7]),
        ('0-0', [0]),
        (' 2 , 4-6 ', [2, 4, 5, 6]),
        ('-3--1', [-3, -2, -1]),
        (5, [5]),
        ([3, 1, 2], [3, 1, 2]),
        ((4, 5), [4, 5]),
    ],
)
def test_parse_range(spec, expected):
    assert util.parse_range(spec) == expected
    assert util.parse_seeds(spec) == expected


@pytest.mark.parametrize('spec', ['1,a', '1,,2', '3-', '5-2', '1.5', '', [1, 'x'], 2.0])
def test_parse_range_rejects_bad_tokens(spec):
    with pytest.raises(ValueError, match='parse_range'):
        util.parse_range(spec)


def test_parse_tuple_and_vec2():
    assert util.parse_tuple('4x2') == (4, 2)
    assert util.parse_tuple('3,5,7') == (3, 5, 7)
    assert util.parse_tuple((1, 2)) == (1, 2)
    assert util.parse_vec2('0,1') == (0.0, 1.0)
    assert util.parse_vec2('-0.5,0.25') == (-0.5, 0.25)
    with pytest.raises(ValueError, match='parse_tuple'):
        util.parse_tuple('4xb')
    with pytest.raises(ValueError, match='parse_vec2'):
        util.parse_vec2('1,2,3')


def test_format_time():
    assert util.format_time(42) == '42s'
    assert util.format_time(3 * 60 + 5) == '3m 05s'
    assert util.format_time(2 * 3600 + 7 * 60 + 9) == '2h 07m 09s'
    assert util.format_time(28 * 3600 + 12 * 60) == '1d 04h 12m'


def test_next_run_dir_numbering(tmp_path):
    outdir = tmp_path / 'runs'
    assert util.next_run_dir(str(outdir), 'first') == str(outdir / '00000-first')
    assert not outdir.exists()
    (outdir / '00000-a').mkdir(parents=True)
    (outdir / '00007-b').mkdir()
    (outdir / '12-short-prefix').mkdir()
    (outdir / 'notes').mkdir()
    (outdir / '00099-file.txt').write_text('a file, not a run')
    assert util.next_run_dir(str(outdir), 'next') == str(outdir / '00013-next')


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(b'\x00\x01payload')
    with util.open_url(str(path)) as file:
        assert file.read() == b'\x00\x01payload'
    with util.open_url(path.as_uri()) as file:
        assert file.read() == b'\x00\x01payload'
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)
    with pytest.raises(FileNotFoundError, match='missing.bin'):
        util.open_url(str(tmp_path / 'missing.bin'))


def test_open_url_offline_names_cache_path(tmp_path):
    cache_dir = str(tmp_path / 'cache')
    expected_path = util.url_cache_path(UNREACHABLE_URL, cache_dir)
    assert os.path.basename(expected_path).endswith('_x.pkl')
    with pytest.raises(OSError) as info:
        util.open_url(UNREACHABLE_URL, cache_dir=cache_dir, num_attempts=1, verbose=False)
    message = str(info.value)
    assert UNREACHABLE_URL in message
    assert expected_path in message
    assert '\n' not in message


def test_open_url_serves_cached_file_without_network(tmp_path):
    cache_dir = str(tmp_path / 'cache')
    cached = pathlib.Path(util.url_cache_path(UNREACHABLE_URL, cache_dir))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'cached bytes')
    with util.open_url(UNREACHABLE_URL, cache_dir=cache_dir, num_attempts=1, verbose=False) as file:
        assert file.read() == b'cached bytes'
    assert util.open_url(UNREACHABLE_URL, cache_dir=cache_dir, return_filename=True) == str(cached)


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path), 'downloads')
    assert os.path.dirname(util.url_cache_path(UNREACHABLE_URL)) == os.path.join(str(tmp_path), 'downloads')


def test_logger_tees_to_file(tmp_path, capsys):
    log_path = tmp_path / 'log.txt'
    original_stdout = sys.stdout
    with util.Logger(str(log_path)):
        print('to both')
        print('an error line', file=sys.stderr)
    assert sys.stdout is original_stdout
    assert log_path.read_text() == 'to both\nan error line\n'
    captured = capsys.readouterr()
    assert captured.out == 'to both\n'
    assert captured.err == 'an error line\n'
