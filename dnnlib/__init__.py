"""Small utilities: attribute dictionaries, URL/cache handling, parsers and logging."""

from . import util
from .util import EasyDict, make_cache_dir_path

__all__ = ['util', 'EasyDict', 'make_cache_dir_path']
