"""One training run per save_path: an exclusive lock file holding the holder's pid and host.

Two runs on one save_path would interleave their checkpoints, best.model and metrics.jsonl.
The lock is a file created with O_EXCL (atomic on local and network file systems); a lock
left by a process that died on this host is stale and is taken over, one from another host
is refused, since its process cannot be checked from here.
"""
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from speakernet.checkpoint import pid_alive
from speakernet.errors import LockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _holder(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
        holder = _holder(path)
        if holder is None:                   # being written this instant, or garbage
            time.sleep(0.2)
            holder = _holder(path)
        if holder and holder.get("host") == host and not pid_alive(int(holder.get("pid", -1))):
            log.warning("%s: taking over the lock of process %s, which is no longer running",
                        path, holder.get("pid"))
            path.unlink(missing_ok=True)
            continue
        who = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
               if holder else "another run")
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
