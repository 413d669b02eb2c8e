"""Files in an output folder that someone else may have prepared: written without following planted
symlinks, replaced atomically (a reader sees the old file or the new one, never half of one), a whole
folder swapped in as one unit, and one run at a time per folder (an OS lock, freed when its holder dies).

Knows nothing of the rest of the package, so every part may use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import inspect
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:                       # pragma: no cover - Windows: no flock, locks are advisory
    fcntl = None  # type: ignore[assignment]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
LOCK_NAME = ".autocompress.lock"


class UnsafePathError(OSError):
    """A path inside an output folder is a symlink (or otherwise not ours to write); names the path."""


class BusyError(RuntimeError):
    """Another live run holds the output folder's lock; the message names the holder."""


def refuse_symlink(path: str | Path) -> Path:
    """``path`` itself must not be a symlink (a planted link would send our write elsewhere)."""
    p = Path(path)
    if p.is_symlink():
        raise UnsafePathError(f"{p} is a symlink (to {os.readlink(p)}); refusing to write through it: "
                              f"remove it or choose another output folder")
    return p


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` that refuses a symlinked folder in place of the one asked for."""
    p = refuse_symlink(path)
    p.mkdir(parents=True, exist_ok=True)
    refuse_symlink(p)
    return p


def refuse_planted_links(out_dir: str | Path, depth: int = 2) -> None:
    """No symlink among an output folder's files (down to ``depth`` levels): what other modules write
    there (exported models, trial folders, plots) then cannot be redirected outside it either."""
    def walk(d: Path, level: int) -> None:
        with os.scandir(d) as it:
            for e in it:
                if e.is_symlink():
                    refuse_symlink(e.path)
                if level < depth and e.is_dir(follow_symlinks=False):
                    walk(Path(e.path), level + 1)
    root = refuse_symlink(out_dir)
    if root.is_dir():
        walk(root, 1)


def write_bytes(path: str | Path, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically: a fresh temporary file (O_EXCL | O_NOFOLLOW, so never an
    existing file or link), flushed, then renamed over ``path`` (rename replaces a link, never follows it)."""
    p = Path(path)
    make_dir(p.parent)
    refuse_symlink(p)
    if p.is_dir():
        raise UnsafePathError(f"{p} is a folder; expected a file there")
    for attempt in range(100):
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0),
                         0o644)
            break
        except FileExistsError:
            continue
    else:
        raise UnsafePathError(f"{p}: cannot create a temporary file beside it")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def write_text(path: str | Path, text: str) -> int:
    return write_bytes(path, text.encode())


def copy_file(src: str | Path, dst: str | Path) -> int:
    """Copy ``src``'s bytes to ``dst`` with :func:`write_bytes` (``src`` may not be a symlink either)."""
    return write_bytes(dst, refuse_symlink(src).read_bytes())


# -- a whole folder as one unit ------------------------------------------------------------

def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _alive(pid_text: str, own_is_dead: bool = False) -> bool:
    """Whether process ``pid_text`` lives (this process counts as dead for its own abandoned stages)."""
    try:
        pid = int(pid_text)
    except ValueError:
        return True                                          # not our naming: leave it alone
    if pid == os.getpid():
        return not own_is_dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(dest: str | Path) -> Path:
    """A new empty folder beside ``dest`` to fill, then hand to :func:`swap_in_dir`."""
    dest = Path(dest)
    make_dir(dest.parent)
    for old in dest.parent.glob(f".{dest.name}.old-*"):     # left by a run killed mid-swap
        shutil.rmtree(old, ignore_errors=True)
    for dead in dest.parent.glob(f".{dest.name}.new-*"):    # stages of writers that died
        if not _alive(dead.name.rsplit(".new-", 1)[1].split("-")[0], own_is_dead=True):
            shutil.rmtree(dead, ignore_errors=True)
    stage = dest.parent / f".{dest.name}.new-{os.getpid()}-{time.monotonic_ns()}"
    stage.mkdir()
    return stage


def swap_in_dir(stage: str | Path, dest: str | Path) -> None:
    """Make ``stage`` become ``dest`` in one step: a reader of ``dest`` sees the old folder or the new
    one, never a mix. The old folder is removed afterwards."""
    stage, dest = Path(stage), Path(dest)
    refuse_symlink(dest)
    if not dest.exists():
        os.rename(stage, dest)
        return
    if _exchange(stage, dest):
        shutil.rmtree(stage, ignore_errors=True)     # stage now holds the old folder
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}"   # two renames
    os.rename(dest, old)
    os.rename(stage, dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: str | Path) -> None:
    """After a kill between the two renames of the fallback swap: put the old folder back."""
    dest = Path(dest)
    if not dest.exists():
        olds = sorted(dest.parent.glob(f".{dest.name}.old-*"))
        if olds:
            os.rename(olds[-1], dest)


# -- one run per folder --------------------------------------------------------------------

class DirLock:
    """Exclusive lock on an output folder (``flock`` on a lock file inside it). The OS drops it when the
    holding process dies, so a stale lock file from a killed run never blocks the next one. Re-entrant
    within one process (the CLI holds it around ``compress()``, which takes it too)."""

    _held: dict[str, list] = {}                  # resolved folder -> [fd, count] held by this process

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> "DirLock":
        make_dir(self.out_dir)
        self._key = str(self.out_dir.resolve())
        held = DirLock._held.get(self._key)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
            self._fd = held[0]
            return self
        refuse_symlink(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise BusyError(f"{self.out_dir} is in use by another run ({holder}); wait for it to "
                                f"finish or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        DirLock._held[self._key] = [fd, 1, os.getpid()]
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        held = DirLock._held.get(self._key)
        self._fd = None
        if held is not None and held[2] == os.getpid():
            held[1] -= 1
            if held[1] > 0:
                return
            del DirLock._held[self._key]
            os.close(held[0])                        # closing drops the flock

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_out_dir(param: str = "out_dir") -> Callable:
    """Decorator: the call holds :class:`DirLock` on its ``param`` argument for its whole duration."""
    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            with DirLock(bound.arguments[param]):
                return fn(*args, **kwargs)
        return locked
    return deco


__all__ = ["holds_out_dir", "refuse_planted_links", "BusyError", "DirLock", "UnsafePathError", "copy_file", "make_dir", "recover_dir",
           "refuse_symlink", "staging_dir", "swap_in_dir", "write_bytes", "write_text"]
