"""Small file helpers shared by data export, checkpoints and evaluation.

Files and directories mmtlab writes get the permissions the umask gives (usually 0644 / 0755), as
with `open()` and `mkdir()`; `tempfile.mkstemp` / `mkdtemp` create them owner-only (0600 / 0700),
so what is made through them is widened to `0666 & ~umask` / `0777 & ~umask` before it is renamed
into place (`honour_umask`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path | int, directory: bool = False) -> None:
    """Give a file (path or descriptor) or directory made by tempfile the umask's permissions."""
    mode = (0o777 if directory else 0o666) & ~current_umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


def honour_umask_tree(root: str | Path) -> None:
    """`honour_umask` for every file and directory under `root` (not `root` itself): for what
    libraries write owner-only, such as safetensors' `save_file` (0600). Best effort: a file this
    user may not chmod (another rank's, on a shared file system) keeps its mode."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name, directory in [*((d, True) for d in dirnames), *((f, False) for f in filenames)]:
            with contextlib.suppress(OSError):
                honour_umask(Path(dirpath) / name, directory=directory)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        honour_umask(fd)  # mkstemp's 0600 would make every report and config owner-only
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place; an older one of the same name is removed after."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
