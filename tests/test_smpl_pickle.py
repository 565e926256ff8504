"""Tests for training/body/smpl_pickle.py: reading SMPL pickles without chumpy."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from tests.test_lbs import smplx_oracle, synthetic_smpl_arrays
from training.body import lbs
from training.body.body_model import BodyModel
from training.body.smpl_pickle import DEFAULT_SMPL_PATH, SmplFileError, SmplFileNotFoundError, load_smpl_pickle


class FakeChumpyModules:
    """A stand-in `chumpy` package registered in sys.modules only while a pickle is written.

    Its `Ch` pickles like chumpy's: the object's __dict__ (array under 'x' plus bookkeeping)
    as state, rebuilt through copyreg. `ch_ops.add` is an unevaluated expression.
    """

    def __init__(self):
        self.package = types.ModuleType('chumpy')
        self.ch = types.ModuleType('chumpy.ch')
        self.ch_ops = types.ModuleType('chumpy.ch_ops')

        class Ch:
            def __init__(self, x):
                self.x = np.asarray(x)
                self._dirty_vars = {'x'}
                self._depends_on_deps = {}
                self._make_dense = False

            def __getstate__(self):
                return dict(self.__dict__)

        class add:
            def __init__(self, a, b):
                self.a, self.b = a, b

        for cls, module in ((Ch, self.ch), (add, self.ch_ops)):
            cls.__module__ = module.__name__
            cls.__qualname__ = cls.__name__
            setattr(module, cls.__name__, cls)
        self.package.ch, self.package.ch_ops = self.ch, self.ch_ops

    def __enter__(self):
        sys.modules.update({'chumpy': self.package, 'chumpy.ch': self.ch, 'chumpy.ch_ops': self.ch_ops})
        return self

    def __exit__(self, *exc_info):
        for name in ('chumpy', 'chumpy.ch', 'chumpy.ch_ops'):
            sys.modules.pop(name, None)


def write_smpl_pickle(path, arrays: dict, expression_key: str = None, protocol: int = 2) -> None:
    """An SMPL-style pickle (Python 2 protocols): chumpy arrays, a sparse regressor."""
    with FakeChumpyModules() as chumpy:
        content = {
            'v_template': chumpy.ch.Ch(arrays['v_template']),
            'shapedirs': chumpy.ch.Ch(arrays['shapedirs']),
            'posedirs': arrays['posedirs'],
            'J_regressor': scipy.sparse.csc_matrix(arrays['J_regressor']),
            'weights': chumpy.ch.Ch(arrays['weights']),
            'kintree_table': np.where(arrays['kintree_table'] < 0, 2**32 - 1, arrays['kintree_table']).astype(np.int64),
            'f': arrays['f'].astype(np.uint32),
            'J': chumpy.ch.Ch(arrays['J_regressor'] @ arrays['v_template']),
            'bs_style': 'lbs',
            'bs_type': 'lrotmin',
            'vert_sym_idxs': np.arange(len(arrays['v_template'])),
            'weights_prior': chumpy.ch.Ch(arrays['weights']),
        }
        if expression_key is not None:
            content[expression_key] = chumpy.ch_ops.add(content[expression_key], 1.0)
        with open(path, 'wb') as file:
            pickle.dump(content, file, protocol=protocol)


@pytest.fixture
def synthetic_pickle(tmp_path):
    arrays = synthetic_smpl_arrays(num_vertices=50, seed=20)
    path = str(tmp_path / 'SMPL_NEUTRAL.pkl')
    write_smpl_pickle(path, arrays)
    return path, arrays


@pytest.mark.parametrize('protocol', [0, 2])
def test_loads_chumpy_and_sparse_arrays_without_chumpy(tmp_path, protocol):
    arrays = synthetic_smpl_arrays(num_vertices=50, seed=20)
    path = str(tmp_path / 'SMPL_NEUTRAL.pkl')
    write_smpl_pickle(path, arrays, protocol=protocol)
    assert 'chumpy' not in sys.modules
    loaded = load_smpl_pickle(path)
    assert 'chumpy' not in sys.modules
    assert set(loaded) == {'v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'kintree_table', 'f'}
    for key in ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'f'):
        assert isinstance(loaded[key], np.ndarray)
        np.testing.assert_array_equal(loaded[key], arrays[key], err_msg=key)
    np.testing.assert_array_equal(loaded['kintree_table'][1], arrays['kintree_table'][1])
    np.testing.assert_array_equal(loaded['kintree_table'][0, 1:], arrays['kintree_table'][0, 1:])
    assert loaded['f'].dtype == np.int64 and loaded['v_template'].dtype == np.float64


def test_body_model_from_pickle_matches_smplx(synthetic_pickle):
    path, arrays = synthetic_pickle
    betas = np.array([0.7, -0.3])
    body = BodyModel.from_smpl_pickle(path, betas=betas).double()
    assert body.name == 'SMPL_NEUTRAL'
    pose = 0.5 * torch.randn(2, 6, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    full_pose = torch.zeros(2, 24, 3, dtype=torch.float64)
    full_pose[:, lbs.NECK_JOINT], full_pose[:, lbs.HEAD_JOINT] = pose[:, :3], pose[:, 3:]
    oracle = smplx_oracle(arrays)
    expected = oracle(
        betas=torch.as_tensor(np.concatenate([betas, np.zeros(8)]))[None].expand(2, -1),
        global_orient=full_pose[:, 0],
        body_pose=full_pose[:, 1:].reshape(2, -1),
    ).vertices
    torch.testing.assert_close(body.pose(pose) + body.align_point, expected, atol=1e-6, rtol=0)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(SmplFileNotFoundError) as error:
        load_smpl_pickle(str(tmp_path / 'nowhere.pkl'))
    message = str(error.value)
    assert '\n' not in message
    assert 'nowhere.pkl' in message and 'https://smpl.is.tue.mpg.de/' in message
    assert DEFAULT_SMPL_PATH in message and 'embedded' in message
    assert isinstance(error.value, FileNotFoundError)


def test_truncated_file_is_reported(synthetic_pickle, tmp_path):
    path, _ = synthetic_pickle
    with open(path, 'rb') as file:
        data = file.read()
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SmplFileError, match='truncated.pkl: not a readable SMPL pickle') as error:
        load_smpl_pickle(str(truncated))
    assert '\n' not in str(error.value)


def test_foreign_pickles_are_reported(tmp_path):
    a_list = tmp_path / 'list.pkl'
    a_list.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(SmplFileError, match='list.pkl: not an SMPL model, the pickle holds a list'):
        load_smpl_pickle(str(a_list))

    partial = tmp_path / 'partial.pkl'
    partial.write_bytes(pickle.dumps({'v_template': np.zeros((4, 3)), 'f': np.zeros((1, 3))}, protocol=2))
    with pytest.raises(
        SmplFileError,
        match='partial.pkl: not an SMPL model, missing shapedirs, posedirs, J_regressor, weights, kintree_table',
    ):
        load_smpl_pickle(str(partial))


def test_chumpy_expressions_are_reported(tmp_path):
    path = str(tmp_path / 'expression.pkl')
    write_smpl_pickle(path, synthetic_smpl_arrays(num_vertices=30, seed=22), expression_key='shapedirs')
    with pytest.raises(SmplFileError, match=r'expression.pkl: shapedirs is a chumpy.ch_ops.add expression'):
        load_smpl_pickle(path)


def test_pickles_cannot_run_code(tmp_path):
    hostile = tmp_path / 'hostile.pkl'
    hostile.write_bytes(pickle.dumps({'v_template': os.getcwd}, protocol=2))
    with pytest.raises(SmplFileError, match=r'hostile.pkl: .*unexpected object posix.getcwd'):
        load_smpl_pickle(str(hostile))


def test_wrong_shapes_are_reported(tmp_path):
    arrays = synthetic_smpl_arrays(num_vertices=30, seed=23)
    arrays['weights'] = arrays['weights'][:, :20]
    path = str(tmp_path / 'bad_weights.pkl')
    write_smpl_pickle(path, arrays)
    with pytest.raises(SmplFileError, match=r'bad_weights.pkl: weights has shape \(30, 20\), expected \(30, 24\)'):
        load_smpl_pickle(path)
