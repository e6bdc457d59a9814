"""Files written whole or not at all, and values made JSON-safe.

Every output of the project (checkpoints, scores, manifests, options, plots, packs) is written
to a temporary file beside its target and renamed over it: a crash leaves the previous file
intact. Temporary names are `.NAME.PID.tmp`, so a later start can tell a dead writer's file
(checkpoint.remove_stale_temporaries).
"""
import errno
import math
import os
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path):
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path):
    """A temporary path beside `path`, for writers that take a file name (torch.jit.save, the
    ONNX exporter, ffmpeg): renamed over `path` when the block ends, deleted (and the error
    passed on) when it raises."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:              # a read-only file system refuses the clean-up too
            pass


@contextmanager
def atomic_file(path, mode="wb", fsync=False, encoding=None):
    """A file handle to write `path` through, as atomic_path."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def make_folders(folder):
    """mkdir -p `folder`. A file standing where it or a parent must be a folder is named in the
    error's strerror (mkdir's own 'File exists' or 'Not a directory' does not name it)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (Path(folder), *Path(folder).parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None


def write_text(path, text):
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def json_safe(value, skip_keys=()):
    """`value` with numpy scalars and 0-d tensors as numbers, paths as strings, NaN as null and
    infinities as "inf"/"-inf" (JSON has neither); dict keys in `skip_keys` are left out."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, skip_keys) for k, v in value.items() if k not in skip_keys}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, skip_keys) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
