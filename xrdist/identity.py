"""What a file on disk *is*, so that a cached handle or description can be checked.

A :class:`FileIdentity` is taken with one ``os.stat`` (a few microseconds). Two
identities of the same path differ when the file was replaced (new inode), rewritten
(new size or modification time) or deleted (``stat`` fails).

The device number is recorded but not compared: on a network file system each machine
numbers its mount differently, so a file described on one machine and read by a dask
worker on another has the same inode, size and modification time but another device.

Notes
-----
Thread-safe and picklable (a frozen dataclass of integers).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileIdentity:
    """Device, inode, size and modification time (ns) of a regular file; equality and
    hashing leave the device out (see the module docstring)."""

    device: int = field(compare=False)
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """Stat ``path``; raise an ``OSError`` naming it if it is missing or not a file."""
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(
                errno.EISDIR,
                "is a directory, not a file (pass the path of a file in it)",
                os.fspath(path),
            )
        return cls.from_stat(st)

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        """The identity that ``st`` (an ``os.stat`` result) records."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` records this identity (``from_stat(st) == self`` without
        building one: checks after every read of every file call this)."""
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (self.inode, self.size, self.mtime_ns)

    def same_file(self, other: FileIdentity) -> bool:
        """Same inode (content may have changed)."""
        return self.inode == other.inode

    def describe_change(self, new: FileIdentity) -> str:
        """Words for what changed between ``self`` (before) and ``new`` (now)."""
        if not self.same_file(new):
            return "was replaced by another file"
        changes = []
        if new.size != self.size:
            changes.append(f"size {self.size} -> {new.size} bytes")
        if new.mtime_ns != self.mtime_ns:
            changes.append("modification time changed")
        return "was modified (" + ", ".join(changes) + ")" if changes else "is unchanged"
