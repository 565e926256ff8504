"""Small utilities shared by the scripts and the training loop.

Attribute dictionaries, command-line parsers for ranges and tuples, run-directory numbering,
a stdout/stderr tee for `log.txt`, and `open_url`, which opens local files directly and
downloads http(s) files once into a local cache.
"""

import hashlib
import io
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO, TextIO


class EasyDict(dict):
    """A dict whose items can also be read and written as attributes: `d.key` is `d['key']`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ------------------------------------------------------------------------------------------------
# Logging and formatting.


class _TeeStream:
    """A text stream that writes to an original stream and to a shared log file."""

    def __init__(self, original: TextIO, logger: 'Logger'):
        self.original = original
        self.logger = logger

    def write(self, text: str | bytes) -> int:
        if isinstance(text, bytes):
            text = text.decode()
        if self.logger.file is not None:
            self.logger.file.write(text)
        self.original.write(text)
        if self.logger.should_flush:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.logger.file is not None:
            self.logger.file.flush()
        self.original.flush()

    def isatty(self) -> bool:
        # Progress bars query this to decide on carriage returns, which would clutter the log.
        return False


class Logger:
    """Copy everything written to stdout and stderr into a log file as well (`log.txt`).

    Used as a context manager or closed explicitly; closing restores the original streams.
    """

    def __init__(self, file_name: str | None = None, file_mode: str = 'w', should_flush: bool = True):
        self.file: TextIO | None = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.original_stdout = sys.stdout
        self.original_stderr = sys.stderr
        self.stdout = _TeeStream(sys.stdout, self)
        self.stderr = _TeeStream(sys.stderr, self)
        sys.stdout = self.stdout
        sys.stderr = self.stderr

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def close(self) -> None:
        self.stdout.flush()
        self.stderr.flush()
        # Only restore streams that still point at this logger, so nested loggers unwind cleanly.
        if sys.stdout is self.stdout:
            sys.stdout = self.original_stdout
        if sys.stderr is self.stderr:
            sys.stderr = self.original_stderr
        if self.file is not None:
            self.file.close()
            self.file = None


def format_time(seconds: int | float) -> str:
    """Render a duration compactly: '42s', '3m 05s', '2h 07m 09s', '1d 04h 12m'."""
    total = int(round(seconds))
    if total < 60:
        return f'{total}s'
    if total < 60 * 60:
        return f'{total // 60}m {total % 60:02d}s'
    if total < 24 * 60 * 60:
        return f'{total // 3600}h {(total // 60) % 60:02d}m {total % 60:02d}s'
    return f'{total // 86400}d {(total // 3600) % 24:02d}h {(total // 60) % 60:02d}m'


# ------------------------------------------------------------------------------------------------
# Command-line parsers.


def parse_range(spec: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """Parse a list of integers and inclusive ranges: '1,3-5,10' -> [1, 3, 4, 5, 10].

    An int gives a one-element list; a list or tuple of ints is returned as a list.
    """
    if isinstance(spec, bool):
        raise ValueError(f'parse_range: expected ranges such as "1,3-5", got {spec!r}')
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in spec):
            raise ValueError(f'parse_range: expected a list of integers, got {spec!r}')
        return list(spec)
    if not isinstance(spec, str):
        raise ValueError(f'parse_range: expected ranges such as "1,3-5", got {type(spec).__name__} {spec!r}')
    values = []
    for token in spec.split(','):
        token = token.strip()
        single = re.fullmatch(r'-?\d+', token)
        span = re.fullmatch(r'(-?\d+)\s*-\s*(-?\d+)', token)
        if single:
            values.append(int(token))
        elif span:
            start, stop = int(span.group(1)), int(span.group(2))
            if stop < start:
                raise ValueError(
                    f'parse_range: range "{token}" in "{spec}" ends before it starts; write it as "{stop}-{start}"'
                )
            values.extend(range(start, stop + 1))
        else:
            raise ValueError(
                f'parse_range: cannot read "{token}" in "{spec}"; use integers and ranges such as "1,3-5,10"'
            )
    return values


def parse_seeds(spec: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """Parse a seed list for the generation scripts; the same syntax as `parse_range`."""
    return parse_range(spec)


def parse_tuple(spec: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Parse a tuple of integers separated by 'x' or ',': '4x2' -> (4, 2), '3,5,7' -> (3, 5, 7)."""
    if isinstance(spec, (tuple, list)):
        return tuple(int(item) for item in spec)
    tokens = re.split(r'[x,]', spec.strip())
    try:
        return tuple(int(token) for token in tokens)
    except ValueError:
        raise ValueError(
            f'parse_tuple: cannot read "{spec}"; write integers separated by "x" or ",", e.g. "4x2"'
        ) from None


def parse_vec2(spec: str | tuple[float, float] | list[float]) -> tuple[float, float]:
    """Parse a 2-vector of floats: '0,1' -> (0.0, 1.0), '-0.5,0.25' -> (-0.5, 0.25)."""
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError(f'parse_vec2: expected two numbers, got {spec!r}')
        return (float(spec[0]), float(spec[1]))
    tokens = spec.split(',')
    if len(tokens) != 2:
        raise ValueError(f'parse_vec2: cannot read "{spec}"; write two numbers separated by a comma, e.g. "0,1"')
    try:
        return (float(tokens[0]), float(tokens[1]))
    except ValueError:
        raise ValueError(
            f'parse_vec2: cannot read "{spec}"; write two numbers separated by a comma, e.g. "0,1"'
        ) from None


# ------------------------------------------------------------------------------------------------
# Run directories.


def next_run_dir(outdir: str, desc: str) -> str:
    """Return the path of the next numbered run directory: `{outdir}/{id:05d}-{desc}`.

    `id` is one more than the largest numeric prefix among the entries of `outdir` (0 when there
    are none). Nothing is created: the caller creates the directory with
    `os.makedirs(path, exist_ok=False)`, so two runs started at once fail loudly instead of
    sharing a directory.
    """
    existing_ids = []
    if os.path.isdir(outdir):
        for entry in os.listdir(outdir):
            match = re.match(r'^(\d+)', entry)
            if match and os.path.isdir(os.path.join(outdir, entry)):
                existing_ids.append(int(match.group(1)))
    run_id = max(existing_ids, default=-1) + 1
    return os.path.join(outdir, f'{run_id:05d}-{desc}')


# ------------------------------------------------------------------------------------------------
# Opening files and URLs.


def make_cache_dir_path(*paths: str) -> str:
    """Path inside the download cache: `$DNNLIB_CACHE_DIR`, else `~/.cache/dnnlib`."""
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    return os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib', *paths)


def url_cache_path(url: str, cache_dir: str | None = None) -> str:
    """Where `open_url` keeps the download of `url`: `{cache_dir}/{md5(url)}_{basename}`."""
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    basename = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    basename = re.sub(r'[^0-9a-zA-Z._-]', '_', basename)
    return os.path.join(cache_dir, f'{url_md5}_{basename}')


def _is_url(text: str) -> bool:
    return re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', text) is not None


def _download(url: str, num_attempts: int, verbose: bool) -> bytes:
    last_error: BaseException | None = None
    for attempt in range(num_attempts):
        if verbose:
            print(f'Downloading {url} ...', end='', flush=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
            if verbose:
                print(' done')
            return data
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            if verbose:
                print(' failed')
            if attempt + 1 < num_attempts:
                time.sleep(1)
    assert last_error is not None
    raise last_error


def open_url(
    url_or_path: str,
    cache_dir: str | None = None,
    num_attempts: int = 3,
    verbose: bool = True,
    return_filename: bool = False,
    cache: bool = True,
) -> BinaryIO | str:
    """Open a local path, a file:// URL or an http(s) URL for binary reading.

    http(s) URLs are downloaded once into `cache_dir` (default: `make_cache_dir_path('downloads')`)
    and later served from there without touching the network. With `return_filename=True` the
    local path is returned instead of an open file; that needs `cache=True` for http(s) URLs.
    """
    if num_attempts < 1:
        raise ValueError(f'open_url: num_attempts must be at least 1, got {num_attempts}')

    if not _is_url(url_or_path):
        if not os.path.isfile(url_or_path):
            raise FileNotFoundError(
                f'open_url: no file at "{url_or_path}"; check the path or pass an http(s) or file:// URL'
            )
        return url_or_path if return_filename else open(url_or_path, 'rb')

    scheme = urllib.parse.urlparse(url_or_path).scheme.lower()
    if scheme == 'file':
        local_path = urllib.request.url2pathname(urllib.parse.urlparse(url_or_path).path)
        if not os.path.isfile(local_path):
            raise FileNotFoundError(f'open_url: no file at "{local_path}" (from "{url_or_path}"); check the path')
        return local_path if return_filename else open(local_path, 'rb')
    if scheme not in ('http', 'https'):
        raise ValueError(
            f'open_url: unsupported URL scheme "{scheme}" in "{url_or_path}"; use a local path, file://, http:// or https://'
        )
    if return_filename and not cache:
        raise ValueError(
            'open_url: return_filename=True needs cache=True for http(s) URLs, since the download must land in a file'
        )

    cache_path = url_cache_path(url_or_path, cache_dir)
    if cache and os.path.isfile(cache_path):
        return cache_path if return_filename else open(cache_path, 'rb')

    try:
        data = _download(url_or_path, num_attempts, verbose)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, 'reason', error)
        raise OSError(
            f'open_url: could not download "{url_or_path}" ({reason}); without network, place the file at '
            f'"{cache_path}" or pass a local path instead'
        ) from None

    if not cache:
        return io.BytesIO(data)

    # Write through a temporary file so that an interrupted download never poses as a cached file.
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix='.download-', dir=os.path.dirname(cache_path))
    try:
        with os.fdopen(fd, 'wb') as file:
            file.write(data)
        os.replace(temp_path, cache_path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise
    return cache_path if return_filename else open(cache_path, 'rb')
