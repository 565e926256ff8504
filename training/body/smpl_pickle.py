"""Read the official SMPL model pickle without chumpy.

The SMPL `.pkl` files (`SMPL_NEUTRAL.pkl`: SMPLify's `basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`
or the SMPL 1.1 release) are Python 2 pickles in which some arrays are chumpy objects and the
joint regressor is a scipy sparse matrix. chumpy does not import on current Python/numpy, so
the unpickler below substitutes small stand-in classes for every chumpy and scipy.sparse
class, keeps their pickled state, and rebuilds plain numpy arrays from it. Only numpy,
builtin containers and those stand-ins may be created: nothing else in the file can run.
"""

import io
import os
import pickle
from typing import Any

import numpy as np
import scipy.sparse

DEFAULT_SMPL_PATH = os.path.join('body_models', 'smpl', 'SMPL_NEUTRAL.pkl')

SMPL_KEYS = ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'kintree_table', 'f')

_ALLOWED_GLOBALS = {
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('copyreg', '_reconstructor'),
    ('builtins', 'object'),
    ('builtins', 'set'),
    ('builtins', 'frozenset'),
    ('builtins', 'slice'),
    ('builtins', 'complex'),
    ('builtins', 'bytearray'),
    ('collections', 'OrderedDict'),
    ('_codecs', 'encode'),  # bytes in protocol-2 pickles written by Python 3.
}


class SmplFileError(ValueError):
    """An SMPL pickle that cannot be read, with a one-line reason naming the file."""


class SmplFileNotFoundError(FileNotFoundError):
    """No SMPL pickle where one was asked for."""


class _PickledState:
    """Stands in for a chumpy or scipy.sparse object and keeps what it pickled."""

    state: Any = None

    def __init__(self, *args, **kwargs):
        # Protocol-0 pickles may call the class with arguments; only the state matters here.
        pass

    def __setstate__(self, state):
        self.state = state

    def state_dict(self) -> dict:
        state = self.state
        # Objects with __slots__ pickle (dict_state, slots_state).
        if isinstance(state, tuple) and len(state) == 2:
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        return state if isinstance(state, dict) else {}


class _ChumpyStandIn(_PickledState):
    pass


class _SparseStandIn(_PickledState):
    pass


# Python 2 module names, as find_class receives them before any renaming.
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


class _SmplUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if module == 'chumpy' or module.startswith('chumpy.'):
            return type(name, (_ChumpyStandIn,), {'chumpy_class': f'{module}.{name}'})
        if module.startswith('scipy.sparse'):
            return type(name, (_SparseStandIn,), {'sparse_class': name})
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith('numpy.core'):
                module = 'numpy._core' + module[len('numpy.core') :]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'unexpected object {module}.{name}')


def _sparse_to_dense(obj: _SparseStandIn) -> np.ndarray:
    state = obj.state_dict()
    shape = state.get('_shape', state.get('shape'))
    kind = obj.sparse_class[:3]
    if kind in ('csc', 'csr') and {'data', 'indices', 'indptr'} <= set(state) and shape is not None:
        matrix_class = scipy.sparse.csc_matrix if kind == 'csc' else scipy.sparse.csr_matrix
        matrix = matrix_class((state['data'], state['indices'], state['indptr']), shape=tuple(int(n) for n in shape))
        return matrix.toarray()
    if kind == 'coo' and {'data', 'row', 'col'} <= set(state) and shape is not None:
        matrix = scipy.sparse.coo_matrix(
            (state['data'], (state['row'], state['col'])), shape=tuple(int(n) for n in shape)
        )
        return matrix.toarray()
    raise ValueError(f'a scipy.sparse.{obj.sparse_class} without its csc/csr/coo arrays')


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, _ChumpyStandIn):
        state = value.state_dict()
        if 'x' not in state:
            raise ValueError(f'a {value.chumpy_class} expression instead of a stored array')
        return _to_array(state['x'])
    if isinstance(value, _SparseStandIn):
        return _sparse_to_dense(value)
    return np.asarray(value)


def load_smpl_pickle(path: str = DEFAULT_SMPL_PATH) -> dict[str, np.ndarray]:
    """The SMPL arrays of an official SMPL pickle, as plain numpy arrays.

    Returns v_template [V,3] f64, shapedirs [V,3,K] f64, posedirs [V,3,207] f64,
    J_regressor [24,V] f64 (dense), weights [V,24] f64, kintree_table [2,24] i64, f [F,3] i64.
    """
    if not os.path.isfile(path):
        raise SmplFileNotFoundError(
            f'SMPL model not found at {path}: download the SMPL neutral model from '
            f'https://smpl.is.tue.mpg.de/ (free registration) and save it as '
            f'{DEFAULT_SMPL_PATH} or pass its path; the embedded body model works without it'
        )
    with open(path, 'rb') as file:
        raw = file.read()
    try:
        content = _SmplUnpickler(io.BytesIO(raw), encoding='latin1').load()
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise SmplFileError(f'{path}: not a readable SMPL pickle (truncated or corrupt?): {reason}') from None
    if not isinstance(content, dict):
        raise SmplFileError(
            f'{path}: not an SMPL model, the pickle holds a {type(content).__name__} instead of a dict of arrays'
        )
    missing = [key for key in SMPL_KEYS if key not in content]
    if missing:
        raise SmplFileError(f'{path}: not an SMPL model, missing {", ".join(missing)}')

    arrays = {}
    for key in SMPL_KEYS:
        try:
            arrays[key] = _to_array(content[key])
        except ValueError as error:
            raise SmplFileError(f'{path}: {key} is {error}') from None
    for key in ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights'):
        arrays[key] = arrays[key].astype(np.float64)
    arrays['kintree_table'] = arrays['kintree_table'].astype(np.int64)
    arrays['f'] = arrays['f'].astype(np.int64)
    _check_shapes(path, arrays)
    return arrays


def _check_shapes(path: str, arrays: dict[str, np.ndarray]) -> None:
    num_vertices = arrays['v_template'].shape[0]
    num_joints = arrays['kintree_table'].shape[-1]
    expected = {
        'v_template': (num_vertices, 3),
        'shapedirs': (num_vertices, 3, arrays['shapedirs'].shape[-1]),
        'posedirs': (num_vertices, 3, 9 * (num_joints - 1)),
        'J_regressor': (num_joints, num_vertices),
        'weights': (num_vertices, num_joints),
        'kintree_table': (2, num_joints),
    }
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise SmplFileError(f'{path}: {key} has shape {arrays[key].shape}, expected {shape}')
    if arrays['f'].ndim != 2 or arrays['f'].shape[1] != 3:
        raise SmplFileError(f'{path}: f has shape {arrays["f"].shape}, expected [F, 3]')
