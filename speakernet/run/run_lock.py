"""One training run per save_path: an exclusive lock file holding the holder's pid and host.

Two runs on one save_path would interleave their checkpoints, best.model and metrics.jsonl.
The lock is a file created with O_EXCL (atomic on local and network file systems); a lock
left by a process that died on this host is stale and is taken over, one from another host
is refused, since its process cannot be checked from here. A lock whose record cannot be read
(empty after a kill between create and write, or not the record this module writes) is given
UNREADABLE_GRACE seconds to be completed, then treated like a dead process's lock.
"""
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from speakernet.core.checkpoint import pid_alive
from speakernet.core.errors import LockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# A writer fills the record microseconds after creating the file; one still unreadable after
# this many seconds was left by a killed writer, or is not a lock of this project.
UNREADABLE_GRACE = 10.0


def _holder(path):
    """The lock's record {"pid": int, "host": str, "started": str}, or None if it is not one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("host"), str)
            or isinstance(record.get("pid"), bool) or not isinstance(record.get("pid"), int)
            or record["pid"] <= 0):
        return None
    return record


def _age(path):
    try:
        return time.time() - Path(path).stat().st_mtime
    except OSError:
        return 0.0


def _wait_for_record(path):
    """The lock's record, waiting while it may still be being written; None once it is
    unreadable and older than UNREADABLE_GRACE (or gone)."""
    while True:
        holder = _holder(path)
        if holder is not None or not path.exists() or _age(path) >= UNREADABLE_GRACE:
            return holder
        time.sleep(0.2)


def _try_create(path, record):
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return True


def acquire(save_path):
    """Take save_path's lock, or raise LockedError naming the run that holds it."""
    path = Path(save_path) / LOCK_NAME
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):                       # the second try follows a stale lock's removal
        if _try_create(path, record):
            return path
        if not path.is_file():
            raise LockedError(f"--save_path {save_path}: {path} is not a lock file (a folder or "
                              f"another kind of file); remove it if no run uses this save_path")
        holder = _wait_for_record(path)
        if holder is None:
            log.warning("%s: taking over a lock whose content is not a lock record (left by a run "
                        "killed while taking it, or not written by this project)", path)
            path.unlink(missing_ok=True)
            continue
        if holder["host"] == host and not pid_alive(holder["pid"]):
            log.warning("%s: taking over the lock of process %s, which is no longer running",
                        path, holder["pid"])
            path.unlink(missing_ok=True)
            continue
        who = f"process {holder['pid']} on {holder['host']} since {holder.get('started')}"
        raise LockedError(f"--save_path {save_path} is in use by {who} (wait for it to finish or use "
                          f"another --save_path; if that process is gone, delete {path})")
    raise LockedError(f"--save_path {save_path}: could not take the lock {path} (delete it if no run uses it)")


def release(path):
    holder = _holder(path)
    if holder and holder.get("pid") == os.getpid():
        Path(path).unlink(missing_ok=True)


@contextmanager
def locked(save_path, enabled=True):
    """Hold save_path's lock for the block (a no-op when not enabled, e.g. on ranks > 0)."""
    path = acquire(save_path) if enabled else None
    try:
        yield path
    finally:
        if path is not None:
            release(path)
