"""Outputs that appear only when complete: written under a temporary name beside their destination
(`.<name>.<random>.tmp`) and moved over it in one step, so that a crash or a kill mid-write leaves
the previous file, or none, but never a partial one.

atomic_write takes a writer of a file object, atomic_write_path one of a path (for libraries that only
write to a path: mrcfile, ffmpeg); write_json writes a JSON document. Logs that grow (stats.jsonl, metric-*.jsonl)
are appended a whole line at a time by append_line instead. A write that fails (a full disk, no
permission) removes its temporary file and raises WriteError, whose message is one line naming the file
and the cause; the command-line tools print it as their error (training/cli.py: Command).
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from typing import BinaryIO

ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same members give the same archive
TEMP_SUFFIX = '.tmp'
# The temporary names made here: '.' + the destination's name + '.' + tempfile's 8 random characters + '.tmp'.
TEMP_NAME = re.compile(r'\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp')


class WriteError(OSError):
    """An output that could not be written; nothing of it was left. str(): 'cannot write PATH: CAUSE'."""

    def __str__(self) -> str:
        return f'cannot write {self.filename}: {self.strerror}'


def _write_error(error: OSError, path: str) -> WriteError:
    if isinstance(error, WriteError):
        return error
    return WriteError(error.errno, error.strerror or str(error) or type(error).__name__, path)


@contextlib.contextmanager
def _writing(path: str):
    """Turn an OSError of the block into a WriteError naming `path`."""
    try:
        yield
    except OSError as error:
        raise _write_error(error, path) from None


def _os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that `error` is or was raised while handling (torch.save reports a failed write as a
    RuntimeError raised from the OSError of the file object), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_file_beside(path: str) -> str:
    """Create an empty temporary file in the folder of `path` (made if missing) -> its path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix=TEMP_SUFFIX, dir=directory)
    os.close(fd)
    return temp_path


def _move_into_place(temp_path: str, path: str) -> None:
    """Flush the finished temporary file to disk and rename it over `path`."""
    with open(temp_path, 'rb+') as file:
        os.fsync(file.fileno())
    os.chmod(temp_path, 0o644)  # mkstemp makes owner-only files; outputs are ordinary files
    os.replace(temp_path, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def remove_unfinished_writes(directory: str) -> list:
    """Delete the temporary files that a writer here leaves when its process is killed mid-write (named as
    TEMP_NAME; other files are left alone); call it only where no other process is writing.
    -> [(path, size in bytes)] of the removed files"""
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if TEMP_NAME.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            size = os.path.getsize(path)
            os.remove(path)
            removed.append((path, size))
    return removed


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then move it over `path` in one step.

    On any error the temporary file is removed and an existing file at `path` is left untouched; an OSError
    (a full disk, no permission) becomes a WriteError naming `path`.
    """
    atomic_write_path(path, lambda temp_path: _write_file(temp_path, write))


def _write_file(path: str, write: Callable[[BinaryIO], None]) -> None:
    with open(path, 'wb') as file:
        write(file)


def atomic_write_path(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temp_path)`, which writes the whole output at temp_path (beside `path`; a name that ends in
    '.tmp', so a writer that picks the format by the extension must be told it), then move it over `path`.

    Errors as atomic_write.
    """
    with _writing(path):
        temp_path = _temporary_file_beside(path)
    try:
        write(temp_path)
        _move_into_place(temp_path, path)
    except BaseException as error:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        cause = _os_error_behind(error)
        if cause is not None:
            raise _write_error(cause, path) from None
        raise


def write_json(path: str, value, indent: int | None = 1) -> None:
    """Write `value` as JSON (UTF-8) to `path` through atomic_write."""
    text = json.dumps(value, indent=indent)
    atomic_write(path, lambda file: file.write(text.encode()))


class ZipOutput:
    """A stored (uncompressed) zip archive with fixed member timestamps, written beside `path`.

    add() members, then commit() to move the archive to `path`, or abort() to delete it. finish()
    completes the archive on disk without moving it, so that several outputs can all be finished
    before any of them is committed. Stored, not deflated: images are compressed already, and stored
    members read fastest.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._temp = _temporary_file_beside(path)
        self._zip = zipfile.ZipFile(self._temp, 'w', compression=zipfile.ZIP_STORED)
        self._finished = False

    def add(self, name: str, data: bytes) -> None:
        with _writing(self.path):
            self._zip.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP), data)

    def finish(self) -> None:
        if not self._finished:
            with _writing(self.path):
                self._zip.close()
                with open(self._temp, 'rb+') as file:
                    os.fsync(file.fileno())
            self._finished = True

    def commit(self) -> None:
        self.finish()
        with _writing(self.path):
            _move_into_place(self._temp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closing writes the directory, which may fail in turn
            self._zip.close()
        if os.path.exists(self._temp):
            os.remove(self._temp)


class FolderOutput:
    """A folder filled under a temporary name beside `path` and renamed to it on commit (an existing,
    empty or to-be-overwritten folder at `path` is replaced); abort() deletes it."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._temp = tempfile.mkdtemp(
            prefix=f'.{os.path.basename(os.path.normpath(path))}.', suffix=TEMP_SUFFIX, dir=parent
        )

    def add(self, name: str, data: bytes) -> None:
        target = os.path.join(self._temp, *name.split('/'))
        with _writing(os.path.join(self.path, *name.split('/'))):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, 'wb') as file:
                file.write(data)

    def commit(self) -> None:
        with _writing(self.path):
            os.chmod(self._temp, 0o755)  # mkdtemp makes owner-only folders
            if os.path.isdir(self.path):
                shutil.rmtree(self.path)
            os.replace(self._temp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self._temp, ignore_errors=True)


def append_line(path: str, line: str) -> None:
    """Append one line of text to a log, in one write. A last line that a killed writer left without its end is
    ended first, so that it stays a line of its own and the new line is whole. A failure raises WriteError."""
    data = (line.rstrip('\n') + '\n').encode()
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b'\n':
                data = b'\n' + data
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
        finally:
            os.close(descriptor)
    except OSError as error:
        raise _write_error(error, path) from None


def read_lines_of_json(path: str) -> list:
    """The records of a log of JSON lines -> [dict]; a line that does not parse (the torn last line of a killed
    writer, see append_line) is skipped."""
    records = []
    with open(path, encoding='utf-8') as file:
        for line in file:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
