"""A million file paths in two numpy arrays instead of a million Python strings.

Loader workers are forked with the training list; a Python list of path strings is copied page
by page into each of them as reference counts change (copy-on-read), while these arrays are
never written after they are built and stay shared.
"""
import numpy as np


class PathTable:
    """Read-only sequence of paths `prefix + entry` (an absolute entry stands alone): the
    entries' UTF-8 bytes in one buffer, with offsets."""

    def __init__(self, entries, prefix=""):
        entries = list(entries)
        self.prefix = prefix
        blob = "".join(entries).encode("utf-8")
        sizes = np.fromiter(map(len, entries), dtype=np.int64, count=len(entries))
        if len(blob) != sizes.sum():           # non-ASCII names: count bytes, not characters
            sizes = np.fromiter((len(e.encode("utf-8")) for e in entries), dtype=np.int64, count=len(entries))
        self._offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._offsets[1:])
        self._data = np.frombuffer(blob, dtype=np.uint8).copy()

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        entry = self._data[self._offsets[index]:self._offsets[index + 1]].tobytes().decode("utf-8")
        return entry if entry.startswith("/") else self.prefix + entry

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other):
        return list(self) == list(other)

    def index(self, path):
        for i, candidate in enumerate(self):
            if candidate == path:
                return i
        raise ValueError(f"{path} is not in the table")
