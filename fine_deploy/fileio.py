"""Atomic writes and content hashes shared by every file format of the project.

A crash must never leave a half-written artifact that looks whole, so everything is written to a
temporary sibling and renamed into place (rename is atomic within one filesystem). The temporary
sibling is hidden and names the writing process (`.NAME.PID-xxxx.tmp`); a write that was killed
(`kill -9`) leaves it behind, and the next atomic write into the same folder removes every such
leftover whose process is gone. Files and folders get the permissions of an ordinary `open` /
`mkdir` under the user's umask (0644 / 0755 typically), not the private 0600 / 0700 of mkstemp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LEFTOVER = re.compile(r"^\..+\.(\d+)-[^.]+\.(tmp|old)$")
# written by versions before the process id was in the name: `.NAME.xxxxxxxx.tmp`
_LEGACY = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or cannot tell): leave it alone
    return True


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings that killed atomic writes left in `directory`; return what was removed."""
    directory = Path(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _LEFTOVER.match(name)
        if m is not None:
            if _pid_alive(int(m.group(1))):
                continue
        elif _LEGACY.match(name) is None:
            continue
        p = directory / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and a trailing newline: equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, canonical_json(obj).encode())


def read_cache(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON dict this program cached earlier, or None when it is missing or damaged (then it is recomputed)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_cache(path: str | os.PathLike, data: Any) -> None:
    """Cache `data` atomically; a read-only cache dir only costs the recomputation next time."""
    try:
        atomic_write_json(path, data)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # as mkdir would create it, not mkdtemp's 0700
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


RECENT_S = 5.0  # files changed this recently are never served a remembered hash


def sha256_file_remembered(path: str | os.PathLike) -> str:
    """sha256 of a large file that is read again and again (a supernet's weights at every command),
    hashed once per (path, inode, size, mtime, ctime): re-reading gigabytes took longer than a warm plan.
    A write changes mtime and ctime; a file written in the last few seconds is always hashed afresh, since
    two writes inside one timestamp tick could otherwise share a key."""
    import time

    from fine_deploy.paths import cache_dir

    p = Path(path).resolve()
    st = p.stat()
    if time.time() - max(st.st_mtime, st.st_ctime) < RECENT_S:
        return sha256_file(p)
    key = f"{p}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    book = cache_dir() / "file-hashes.json"
    known = read_cache(book) or {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(p)
    known = {k: v for k, v in known.items() if not k.startswith(f"{p}|")}
    known[key] = digest
    write_cache(book, known)
    return digest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: str | os.PathLike, *, missing: str, invalid: str) -> Any:
    """Parse a JSON file; a missing or unparsable file is a FineDeployError ending in the given fix."""
    from fine_deploy.errors import FineDeployError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FineDeployError(f"{path} does not exist; {missing}") from None
    except (OSError, ValueError) as e:
        raise FineDeployError(f"{path} is not valid JSON ({e}); {invalid}") from None
