"""Writing results: names that never collide, folders checked before work starts, files that
appear whole or not at all.

Every command that writes files names them with :func:`output_stem`, checks its destination with
:func:`check_output_dir` before spending time on the inputs, and writes through
:func:`write_together`, so a full disk, a folder in the way or Ctrl-C leaves neither a half file
nor one file of a pair (a labels image without its table) under a real name. Failures are
:class:`OutputError`: a :class:`~napari_nucleiseg.io.SlideError` naming the output file, which
the command line prints as one line.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import SlideError

#: Suffixes that name one format together with the one before them: ``x.ome.tif`` is ``x``.
_DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.btf", ".ome.zarr", ".nuclei.zarr")


class OutputError(SlideError):
    """An output could not be written (a file in the way of its folder, no space, no
    permission). ``str()`` names the output file and the problem."""


def output_stem(path) -> str:
    """The name results of ``path`` are saved under: the whole file name less its last suffix
    (``case.1.png`` → ``case.1``; ``x.ome.tif`` → ``x``), so inputs that differ anywhere but in
    their folder or format get different outputs."""
    name = Path(path).name
    low = name.lower()
    for double in _DOUBLE_SUFFIXES:
        if low.endswith(double) and len(name) > len(double):
            return name[: -len(double)]
    stem = Path(name).stem
    return stem or name


def describe_os_error(exc: OSError) -> str:
    """A short reason for a failed write, in the words a user searches for."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for the file system",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a file is in the way of the folder",
        errno.EEXIST: "a file is in the way of the folder",
        errno.EISDIR: "a folder is in the way of the file",
        errno.ENAMETOOLONG: "the name is too long",
    }
    reason = reasons.get(exc.errno)
    if reason is None:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return reason


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be (or become) a writable folder, or None."""
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            return f"{probe} is a broken link"
        if probe.parent == probe:
            return None
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_output_dir(folder) -> None:
    """Raise :class:`OutputError` if ``folder`` cannot be (or become) a writable folder: it or a
    folder above it is a file, or the nearest existing folder above it is not writable. Creates
    nothing, so a run that then fails on its inputs leaves no empty folder."""
    folder = Path(folder)
    problem = _folder_problem(folder)
    if problem:
        raise OutputError(folder, f"cannot be the output folder: {problem}")


def check_output_file(path, *, directory: bool = False) -> None:
    """Raise :class:`OutputError` if ``path`` cannot be written: a folder is in its place (a file
    for a ``directory`` output such as ``.zarr``), or its folder cannot be made."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise OutputError(path, "a file is in the way; give another name")
    if not directory and path.is_dir():
        raise OutputError(path, "a folder is in the way of the file; give a file name")
    problem = _folder_problem(path.parent)
    if problem:
        raise OutputError(path, f"cannot create its folder: {problem}")


#: Temporary folders :func:`write_together` writes in: ``.nucleiseg-<pid>-<random>.tmp``.
TMP_PREFIX = ".nucleiseg-"


def clear_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary folders of writers that died (SIGKILL, power loss) in ``folder``:
    those whose process no longer runs. Another running job's are left alone. Returns what was
    removed."""
    removed = []
    try:
        entries = list(Path(folder).glob(f"{TMP_PREFIX}*.tmp"))
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and _running(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_together(files: dict[Path, Callable[[Path], None]]) -> list[Path]:
    """Write several files so that they appear together or not at all.

    ``files`` maps each target path to ``write(tmp)``, which writes the complete file at ``tmp``
    (named like the target, for writers that choose a format by suffix). Each file is written
    into a hidden temporary folder beside its target and renamed into place only once every file
    is complete; any failure (an ``OSError``, an error of a writer, Ctrl-C) removes the
    temporary folders and whatever this call had already renamed, and re-raises — an ``OSError``
    as :class:`OutputError` naming the target. Targets' folders are created.
    """
    targets = [Path(p) for p in files]
    tmp_dirs: dict[Path, Path] = {}
    placed: list[Path] = []
    current = targets[0] if targets else Path()
    try:
        staged = []
        for target, write in zip(targets, files.values()):
            current = target
            folder = target.parent
            if folder not in tmp_dirs:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise OutputError(
                        target, f"cannot create its folder ({describe_os_error(exc)})"
                    ) from None
                clear_stale_temporaries(folder)
                name = f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
                tmp_dirs[folder] = folder / name
                tmp_dirs[folder].mkdir()
            tmp = tmp_dirs[folder] / target.name
            write(tmp)
            staged.append((tmp, target))
        for tmp, target in staged:
            current = target
            os.replace(tmp, target)
            placed.append(target)
    except BaseException as exc:
        # Files of one call belong together: those already in place go too.
        for p in placed:
            try:
                p.unlink()
            except OSError:
                pass
        for d in tmp_dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, SlideError):
            raise OutputError(current, f"cannot write ({describe_os_error(exc)})") from None
        raise
    for d in tmp_dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    return placed
