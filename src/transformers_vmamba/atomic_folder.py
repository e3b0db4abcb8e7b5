# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Write a folder so that readers only ever see the complete old or the complete new one.

Used by the checkpoint converter and by the examples' dataset writer. The contract:

- the content is written into a hidden temporary folder and moved into place by renames only when complete;
- an existing folder is replaced only when the caller says it is its own (``owned_by_us``), never the current
  directory, a home directory, a mount point or a filesystem root, and never through a symbolic link;
- writers of the same folder are serialised by a lock file (kept with the other Hugging Face locks, not next to
  the output), so concurrent runs take turns instead of tripping over each other's renames;
- a run that dies (``kill -9``, power loss) leaves at most a hidden ``.NAME.tmp-KEY-*`` / ``.NAME.old-KEY-*``
  folder; the next run for the same output removes those and, if the output itself was moved aside when the
  process died, puts it back. ``KEY`` is derived from the output's full path, so only that output's leftovers
  ever match;
- missing parent folders are created only at the final rename, so a failed run creates none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class FolderWriteError(ValueError):
    """The output folder cannot be written or replaced. Raised before anything of the user's is touched."""


def _default_lock_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "transformers-vmamba" / "locks"


def normalize_output_path(output: str | os.PathLike) -> Path:
    """Absolute path with the parent's symbolic links resolved but the last component kept as given (so a link
    there is seen, not followed)."""
    text = os.fspath(output)
    if not str(text).strip():
        raise FolderWriteError("the output path is empty")
    path = Path(os.path.expanduser(text)).absolute()
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def _deepest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor)


def _protected_reason(path: Path) -> str | None:
    """Folders that are never replaced, whatever they hold."""
    if os.path.ismount(path):
        return "it is a filesystem root or mount point"
    if path == Path.home().resolve():
        return "it is the home directory"
    cwd = Path.cwd().resolve()
    if path == cwd:
        return "it is the current directory"
    if cwd.is_relative_to(path):
        return "it contains the current directory"
    return None


def check_output_folder(
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    owned_by_us: Callable[[Path], str | None] | None = None,
) -> Path:
    """Refuse, with one message naming the path, an output that `write_folder_atomically` would not write.

    `owned_by_us(folder)` returns None for a folder this program wrote (which ``overwrite`` may replace) or the
    reason it is not. Returns the normalized path. Touches nothing, so callers can check before long work.
    """
    path = normalize_output_path(output)
    if os.path.islink(path):
        raise FolderWriteError(f"output {path} is a symbolic link; give the folder's real path")
    if path.exists():
        if not path.is_dir():
            raise FolderWriteError(f"output {path} exists and is not a folder")
        reason = _protected_reason(path)
        if reason is not None:
            raise FolderWriteError(f"refusing to write to {path}: {reason}")
        if not overwrite:
            raise FolderWriteError(f"output {path} already exists (pass --overwrite to replace it)")
        reason = "nothing says this program wrote it" if owned_by_us is None else owned_by_us(path)
        if reason is not None:
            raise FolderWriteError(f"refusing to replace {path}: {reason}; nothing in it was touched")
        anchor = path.parent
    else:
        anchor = _deepest_existing(path.parent)
        if not anchor.is_dir():
            raise FolderWriteError(f"cannot create {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise FolderWriteError(f"cannot write {path}: no write permission in {anchor}")
    return path


def _key(path: Path) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:12]


def _prefixes(path: Path) -> tuple[str, str]:
    stem = f".{path.name[:64]}"
    return f"{stem}.tmp-{_key(path)}-", f"{stem}.old-{_key(path)}-"


def _entries(folder: Path, prefix: str) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(folder) if entry.name.startswith(prefix)]
    except OSError:
        return []


def path_lock(path: Path, lock_dir: Path | None = None):
    """A `filelock.FileLock` for `path`, kept in `lock_dir` (default: under ``$HF_HOME``) rather than next to it."""
    from filelock import FileLock

    lock_dir = Path(lock_dir) if lock_dir is not None else _default_lock_dir()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FolderWriteError(f"cannot create the lock folder {lock_dir}: {error.strerror or error}") from error
    return FileLock(str(lock_dir / f"{_key(path)}.lock"))


@contextlib.contextmanager
def _locked(path: Path, lock_dir: Path | None, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    from filelock import Timeout

    lock = path_lock(path, lock_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(f"another process is writing {path}; waiting for it to finish (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def recover_interrupted_write(path: Path) -> None:
    """Undo what a killed writer of `path` left: put a folder that was moved aside back in place, and delete
    temporary folders and stale backups. Call only while holding the path's lock (no live writer then)."""
    tmp_prefix, old_prefix = _prefixes(path)
    backups = _entries(path.parent, old_prefix)
    if backups and not os.path.lexists(path):
        newest = max(backups, key=lambda backup: backup.stat().st_ctime)  # a rename updates ctime
        os.replace(newest, path)
        backups.remove(newest)
    for stale in backups:
        shutil.rmtree(stale, ignore_errors=True)
    # temporary folders live in the deepest folder that existed when their run started: any ancestor
    for folder in path.parents:
        for stale in _entries(folder, tmp_prefix):
            shutil.rmtree(stale, ignore_errors=True)


def _give_usual_modes(folder: Path) -> None:
    """mkdtemp (and some writers) create owner-only entries; give the result the modes the umask would."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _install(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`. An existing folder is moved aside first and deleted last; if the process dies between
    the two renames, `recover_interrupted_write` puts it back on the next run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    backup = Path(tempfile.mkdtemp(prefix=_prefixes(path)[1], dir=path.parent))
    os.rmdir(backup)
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def write_folder_atomically(
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    owned_by_us: Callable[[Path], str | None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    lock_dir: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block finishes without error it becomes `output`.

    On any error (or KeyboardInterrupt / `sigterm_as_exit`) the temporary folder is deleted and `output`, whether
    it existed or not, is left as it was. See the module docstring for the rules on replacing and locking.
    """
    path = check_output_folder(output, overwrite=overwrite, owned_by_us=owned_by_us)
    with _locked(path, Path(lock_dir) if lock_dir is not None else None, on_wait):
        recover_interrupted_write(path)
        check_output_folder(path, overwrite=overwrite, owned_by_us=owned_by_us)  # another writer may have won
        anchor = path.parent if path.parent.is_dir() else _deepest_existing(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_prefixes(path)[0], dir=anchor))
        try:
            yield tmp
            _give_usual_modes(tmp)
            _install(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` for the duration, so cleanup runs as on Ctrl-C (only from the main
    thread and only when SIGTERM still has its default action: a host program's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


__all__ = [
    "FolderWriteError",
    "check_output_folder",
    "normalize_output_path",
    "path_lock",
    "recover_interrupted_write",
    "sigterm_as_exit",
    "write_folder_atomically",
]
