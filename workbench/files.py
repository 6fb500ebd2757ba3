"""Files, identity and the environment: the few rules every other module follows the same way.

* **Atomic writes.** `atomic(path)` hands out one temporary name beside `path` (``.<name>.<pid>.part``: hidden,
  unique per process, never the file's own suffix replaced) and renames it over `path` only when the block
  finishes; on an error the temporary file or folder is removed. A reader therefore sees the old version or the
  new one, never half of one, and a killed writer leaves nothing that looks finished. `write_text` and
  `write_json` are the one-liners on top.
* **Identity.** `canonical_json` is the one serialisation that names things (sorted keys, no spaces, tuples as
  lists) and `short_hash` its 12-hex-digit sha256: runs, configs and notebook parameters are keyed by it.
* **The environment.** `flag("WORKBENCH_SMOKE")` reads a yes/no variable the one way ("", "0", "false", "no",
  "off" are no); `cache_root()` is ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``; `PROJECT_ROOT` is the checkout.

Floor 1: imports nothing of the package.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_NO = ("", "0", "false", "no", "off")


def flag(name: str, default: bool = False) -> bool:
    """Environment variable `name` as a yes/no; unset gives `default`."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in _NO


def cache_root() -> Path:
    """Where converted models, statistics and probe caches live: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def canonical_json(value) -> str:
    """The one JSON text that names `value`: sorted keys, no spaces, tuples as lists."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(value, digits: int = 12) -> str:
    """The first `digits` hex digits of the sha256 of `canonical_json(value)` (a str is hashed as it is)."""
    text = value if isinstance(value, str) else canonical_json(value)
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def temporary(path: str | os.PathLike) -> Path:
    """The temporary name a write of `path` goes through: hidden, beside it, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """``with atomic(path) as tmp: <write the file or folder tmp>``: renamed over `path` when the block
    ends, removed if it raises. A folder replaces an existing folder (removed first); with ``replace=False``
    an existing `path` is kept and the new one discarded (another writer finished first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and not replace:
            _remove(tmp)
        elif tmp.is_dir():
            if path.exists():
                _remove(path)
            tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, value, indent: int | None = 1) -> Path:
    """Write `value` as JSON to `path` atomically (keys in their order, non-ASCII kept)."""
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False, default=str) + "\n")
