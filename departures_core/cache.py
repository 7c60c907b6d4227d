"""An on-disk cache of what the app derives from a trained run (simulated cells, UMAP
coordinates, scores), so that a second server process — after a restart, on a talk day —
finds them ready instead of sampling, fitting UMAPs and compiling numba again.

Layout: ``<root>/<run key>/<kind>-<request hash>.npz``. The run key hashes what a result
depends on: the content of the checkpoint and of ``responders.json``, the size and mtime of
``data.h5ad``, and the code (departures_core's sources, the versions of the libraries that
compute). A new checkpoint or a code update looks in another folder: nothing stale is served.

An entry is one ``.npz`` of arrays and a JSON header, read with ``allow_pickle=False`` (a
shared runs folder must not run code when read, as for checkpoints). It is written to a
temporary file and renamed into place, so a concurrent reader sees a whole entry or none; an
unreadable entry is recomputed. The cache stays under a size cap, least recently used first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import keys

FORMAT = 1
MAX_BYTES = 2 * 2**30  # all runs' entries together
MAX_ENTRY_BYTES = 256 * 2**20  # a larger result (a long trajectory) is recomputed instead
META = "__meta__"
DEPENDS_ON = ("numpy", "torch", "umap-learn", "pynndescent", "scikit-learn", "pandas")

stats: Counter = Counter()  # "hit", "miss", "write", "error" by kind: for tests and benches
_stats_lock = threading.Lock()


def _count(event: str, kind: str) -> None:
    with _stats_lock:
        stats[event] += 1
        stats[f"{event}:{kind}"] += 1


# ------------------------------------------------------------------ numba
def use_numba_cache(folder: str | Path) -> bool:
    """Keep numba's compiled functions under ``folder`` (``NUMBA_CACHE_DIR``), so that a new
    process loads umap-learn's and pynndescent's cached kernels instead of compiling them.

    Must run before numba is imported; an explicit ``NUMBA_CACHE_DIR`` wins. True when set.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    if "numba" in sys.modules:
        warnings.warn("numba is imported already: its cache folder stays as it is.", stacklevel=2)
        return False
    os.environ["NUMBA_CACHE_DIR"] = str(Path(folder).expanduser())
    return True


# ------------------------------------------------------------------ keys
def stamp(run_dir: str | Path) -> str:
    """Size, mtime, ctime and inode of the run's checkpoint and ``responders.json``: cheap,
    and changes whenever either is written, even with its mtime set back (in-memory keys)."""
    parts = []
    for name in (keys.MODEL_FILE, keys.RESPONDERS_FILE):
        try:
            st = (Path(run_dir) / name).stat()
            parts.append(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}")
        except FileNotFoundError:
            parts.append("-")
    return "/".join(parts)


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of departures_core's sources and of the versions of the libraries it computes
    with: cached results of older code are never served."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(f"format {FORMAT}".encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        h.update(path.read_bytes())
    for package in DEPENDS_ON:
        try:
            h.update(f"{package} {version(package)}".encode())
        except PackageNotFoundError:
            h.update(f"{package} -".encode())
    return h.hexdigest()


_keys: dict[tuple[str, str], str] = {}
_keys_lock = threading.Lock()


def run_key(run_dir: str | Path, expect: str | None = None) -> str | None:
    """What a run's results depend on, as a hash (see the module docstring); None when its
    files change while they are read, or no longer match the `stamp` ``expect`` the caller
    opened the run with — then nothing of it may be cached."""
    run_dir = Path(run_dir).resolve()
    before = stamp(run_dir)
    if expect is not None and before != expect:
        return None
    with _keys_lock:
        if (str(run_dir), before) in _keys:
            return _keys[str(run_dir), before]
    h = hashlib.sha256(code_version().encode())
    for name in (keys.MODEL_FILE, keys.RESPONDERS_FILE):
        path = run_dir / name
        h.update(name.encode())
        if path.is_file():
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    data = run_dir / keys.DATA_FILE
    if data.is_file():
        st = data.stat()
        h.update(f"{st.st_size}-{st.st_mtime_ns}".encode())
    if stamp(run_dir) != before:  # rewritten while hashed: the content is not the opened one
        return None
    key = h.hexdigest()[:32]
    with _keys_lock:
        _keys[str(run_dir), before] = key
    return key


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data (tuples become lists); TypeError for anything else."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot key a cache entry on {type(value).__name__}")


def request_json(request: Any) -> str:
    return json.dumps(_plain(request), separators=(",", ":"), sort_keys=True)


# ------------------------------------------------------------------ values <-> entries
class Codec(NamedTuple):
    """How a value becomes an entry — ``encode(value) -> (arrays, meta)`` — and back —
    ``decode(arrays, meta) -> value``. Either raises TypeError for what it cannot take."""

    encode: Callable[[Any], tuple[dict[str, np.ndarray], dict]]
    decode: Callable[[dict[str, np.ndarray], dict], Any]


def _encode_arrays(value):
    if isinstance(value, np.ndarray):
        return {"a0": value}, {"n": None}
    if isinstance(value, tuple) and all(isinstance(v, np.ndarray) for v in value):
        return {f"a{i}": v for i, v in enumerate(value)}, {"n": len(value)}
    raise TypeError(f"not an array or a tuple of arrays: {type(value).__name__}")


def _decode_arrays(arrays, meta):
    n = meta["n"]
    return arrays["a0"] if n is None else tuple(arrays[f"a{i}"] for i in range(n))


def _encode_frame(df):
    """A frame of numbers with string labels (e.g. scores: methods x metrics)."""
    values = df.to_numpy(dtype=np.float64)  # ValueError for text columns: not cached
    index = np.asarray([str(i) for i in df.index], dtype=str)
    columns = np.asarray([str(c) for c in df.columns], dtype=str)
    return {"values": values, "index": index, "columns": columns}, {"index_name": df.index.name}


def _decode_frame(arrays, meta):
    import pandas as pd

    index = pd.Index(arrays["index"].tolist(), name=meta["index_name"])
    return pd.DataFrame(arrays["values"], index=index, columns=arrays["columns"].tolist())


ARRAYS = Codec(_encode_arrays, _decode_arrays)  # an array, or a tuple of arrays
FRAME = Codec(_encode_frame, _decode_frame)


def to_tagged(value: Any) -> Any:
    """``value`` as JSON that `from_tagged` turns back into it: tuples and dicts with any
    keys survive (e.g. ``Simulation.responders``)."""
    if isinstance(value, tuple):
        return {"tuple": [to_tagged(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[to_tagged(k), to_tagged(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [to_tagged(v) for v in value]
    return _plain(value)


def from_tagged(value: Any) -> Any:
    if isinstance(value, list):
        return [from_tagged(v) for v in value]
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(from_tagged(v) for v in value["tuple"])
        return {from_tagged(k): from_tagged(v) for k, v in value["dict"]}
    return value


def dataclass_entry(obj, prefix: str = "") -> tuple[dict[str, np.ndarray], dict]:
    """A dataclass's array fields as arrays, the others as tagged JSON (`to_tagged`)."""
    arrays, meta = {}, {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[prefix + f.name] = value
        else:
            meta[f.name] = to_tagged(value)
    return arrays, meta


def dataclass_from_entry(cls, arrays: dict, meta: dict, prefix: str = ""):
    """The inverse of `dataclass_entry` (TypeError when the fields no longer match)."""
    values = {f.name: arrays.get(prefix + f.name) for f in dataclasses.fields(cls)}
    values |= {name: from_tagged(v) for name, v in meta.items()}
    return cls(**values)


# ------------------------------------------------------------------ the store
class RunCache:
    """The entries of one run (`run_key`) under ``root``; every method is safe to call from
    several threads and processes. ``key=None`` (a run being rewritten) caches nothing."""

    def __init__(
        self,
        root: str | Path,
        key: str | None,
        *,
        max_bytes: int = MAX_BYTES,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
    ):
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key if key else None
        self.max_bytes, self.max_entry_bytes = max_bytes, max_entry_bytes
        self._written = 0

    @classmethod
    def for_run(cls, root: str | Path, run_dir: str | Path, expect: str | None = None, **kw):
        return cls(root, run_key(run_dir, expect), **kw)

    def path(self, kind: str, request: Any) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(f"{kind}\n{request_json(request)}".encode()).hexdigest()[:24]
        return self.folder / f"{kind}-{digest}.npz"

    def has(self, kind: str) -> bool:
        """Whether any entry of ``kind`` is stored."""
        return self.folder is not None and any(self.folder.glob(f"{kind}-*.npz"))

    def load(self, kind: str, request: Any) -> tuple[dict[str, np.ndarray], dict] | None:
        """The entry's ``(arrays, meta)``, or None when absent or unreadable (then deleted)."""
        path = self.path(kind, request)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
            header = json.loads(str(arrays.pop(META)))
            want = (FORMAT, self.key, kind, request_json(request))
            if (header["format"], header["run"], header["kind"], header["request"]) != want:
                raise ValueError("the entry's header does not match its name")
        except Exception:  # a torn or foreign file: compute again, never fail the view
            _count("error", kind)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least recently used goes first (`prune`)
        except OSError:
            pass
        return arrays, header["meta"]

    def save(self, kind: str, request: Any, arrays: dict[str, np.ndarray], meta: dict) -> bool:
        """Write the entry atomically; False when it is too large or the disk refuses."""
        path = self.path(kind, request)
        size = sum(a.nbytes for a in arrays.values())
        if path is None or size > self.max_entry_bytes:
            return False
        if any(a.dtype.hasobject for a in arrays.values()) or META in arrays:
            raise TypeError("object arrays would need pickle; not cached")
        header = json.dumps(  # TypeError for what JSON cannot hold, before any file exists
            {
                "format": FORMAT,
                "run": self.key,
                "kind": kind,
                "request": request_json(request),
                "meta": meta,
            }
        )
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
            ) as fh:
                tmp = Path(fh.name)
                np.savez(fh, **arrays, **{META: np.array(header)})
            os.replace(tmp, path)
        except OSError:  # read-only or full disk: the app works without the cache
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            _count("error", kind)
            return False
        _count("write", kind)
        self._written += size
        if self._written > self.max_bytes // 20:
            self._written = 0
            prune(self.root, self.max_bytes)
        return True

    def get(self, kind: str, request: Any, compute: Callable[[], Any], codec: Codec = ARRAYS):
        """The cached value of ``(kind, request)``, or ``compute()``'s, then stored."""
        entry = self.load(kind, request)
        if entry is not None:
            try:
                value = codec.decode(*entry)
            except Exception:  # written by other code with the same key: recompute
                _count("error", kind)
            else:
                _count("hit", kind)
                return value
        _count("miss", kind)
        value = compute()
        if self.folder is not None:
            try:
                self.save(kind, request, *codec.encode(value))
            except (TypeError, ValueError):  # a value this codec cannot store
                _count("error", kind)
        return value


def prune(root: str | Path, max_bytes: int = MAX_BYTES, *, stale_tmp_s: float = 3600) -> int:
    """Delete the least recently used entries under ``root`` until the rest fit in
    ``max_bytes``, and temporary files older than ``stale_tmp_s`` (a writer killed midway);
    empty run folders go too. Returns the bytes freed."""
    entries, now, freed = [], time.time(), 0
    for path in Path(root).glob("*/*"):
        try:
            st = path.stat()
        except OSError:  # removed by another process meanwhile
            continue
        if path.suffix == ".tmp":
            if now - st.st_mtime > stale_tmp_s:
                path.unlink(missing_ok=True)
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total, freed = total - size, freed + size
    for folder in Path(root).glob("*"):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
    return freed
