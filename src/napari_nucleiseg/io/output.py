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


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through links, ``..`` and hard links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _not_a_file(path: Path) -> str | None:
    """Why an existing ``path`` cannot be replaced by a file we write, or None. A device or a
    pipe would be replaced by a regular file (``/dev/null`` turned into a JSON file)."""
    if path.is_dir():
        return "a folder is in the way of the file; give a file name"
    if path.exists() and not path.is_file():
        return "is not a regular file (a device, a pipe or a socket); give a file name"
    return None


def check_output_file(path, *, directory: bool = False, inputs=()) -> None:
    """Raise :class:`OutputError` if ``path`` cannot be written: it is one of ``inputs``, a
    folder or a device is in its place (a file for a ``directory`` output such as ``.zarr``),
    or its folder cannot be made."""
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise OutputError(path, f"it is an input ({source}); give another output name")
    if directory and path.exists() and not path.is_dir():
        raise OutputError(path, "a file is in the way; give another name")
    if not directory:
        problem = _not_a_file(path)
        if problem:
            raise OutputError(path, problem)
    problem = _folder_problem(path.parent)
    if problem:
        raise OutputError(path, f"cannot create its folder: {problem}")


def replaceable_image_store(path) -> str | None:
    """None if the folder ``path`` may be replaced by a new OME-Zarr image: it does not exist,
    or it is an image this package wrote (``nucleiseg`` attributes with a ``source``) and holds
    nothing else (but a file browser's hidden files). Otherwise why not: replacing a folder
    deletes everything in it."""
    import json

    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file is in the way; give another name"
    refuse = "the folder exists and is not an image written by nucleiseg; give another name"
    try:
        attrs = json.loads((path / ".zattrs").read_text())
        entries = list(path.iterdir())
    except (OSError, ValueError):
        return refuse
    ours = isinstance(attrs, dict) and "multiscales" in attrs
    ours = ours and isinstance(attrs.get("nucleiseg"), dict) and "source" in attrs["nucleiseg"]
    # Its own files: the level folders and zarr's metadata (a consolidated .zmetadata too),
    # and a file browser's hidden files (.DS_Store, ._*), which are not data.
    own = (".zattrs", ".zgroup", ".zmetadata", ".DS_Store")

    def expected(entry: Path) -> bool:
        if entry.is_dir():
            return entry.name.isdigit()
        return entry.name in own or entry.name.startswith("._")

    return None if ours and all(map(expected, entries)) else refuse


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
    temporary folders and whatever this call had already renamed, puts back the files those had
    replaced, and re-raises — an ``OSError`` as :class:`OutputError` naming the target. A
    target that is a folder, a device or a pipe is refused before anything is written.
    Targets' folders are created.
    """
    targets = [Path(p) for p in files]
    for target in targets:
        problem = _not_a_file(target)
        if problem:
            raise OutputError(target, problem)
    tmp_dirs: dict[Path, Path] = {}
    placed: list[Path] = []
    #: The files replaced so far, kept in the temporary folder until every target is in place.
    replaced: list[tuple[Path, Path]] = []
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
            if target.is_file() or target.is_symlink():
                # Set aside, not overwritten: if a later file of the pair fails, the results
                # already there are put back (a failed rerun must not cost the last good one).
                # Noted before the move, so that Ctrl-C between the two loses nothing.
                kept = tmp.with_name(f"{tmp.name}.replaced")
                replaced.append((kept, target))
                os.replace(target, kept)
            os.replace(tmp, target)
            placed.append(target)
    except BaseException as exc:
        # Files of one call belong together: those already in place go too, and what they
        # replaced comes back.
        for p in placed:
            try:
                p.unlink()
            except OSError:
                pass
        stranded = []
        for kept, target in replaced:
            if not kept.exists():
                continue
            try:
                os.replace(kept, target)
            except OSError:
                # Out of the temporary folder, which a later run clears, under a visible name.
                earlier = target.with_name(f"{target.name}.earlier")
                try:
                    os.replace(kept, earlier)
                    stranded.append(earlier)
                except OSError:
                    stranded.append(kept)
        for d in tmp_dirs.values():
            if not any(k.parent == d for k in stranded):
                shutil.rmtree(d, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, SlideError):
            kept_note = "".join(f"; the earlier result is kept as {k}" for k in stranded)
            raise OutputError(
                current, f"cannot write ({describe_os_error(exc)}){kept_note}"
            ) from None
        raise
    for d in tmp_dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    return placed


def shareable(path) -> Path:
    """Give ``path`` the permissions a plain ``open()`` would have (0666 less the umask), for
    files written through a private temporary file (``mkstemp``, safetensors' writer), which are
    owner-only: a model or demo slide in a shared project folder must be readable by the others
    who use it."""
    path = Path(path)
    os.chmod(path, 0o666 & ~_umask())
    return path


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only set it, and another
    thread creating a file meanwhile would get 0666): Linux states it in /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the briefest set-and-restore
    os.umask(mask)
    return mask
