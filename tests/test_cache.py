"""The on-disk cache of a run's results: hits, never a stale entry, torn or foreign files
recomputed, atomic writes under concurrent readers, a size cap; and the explore values it
keeps (cells, maps) coming back as they went in."""

import dataclasses
import os
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from departures_core import cache, explore, keys


@pytest.fixture
def run_dir(tmp_path):
    """A run folder's files the cache key reads (contents are arbitrary here)."""
    d = tmp_path / "run"
    d.mkdir()
    (d / keys.MODEL_FILE).write_bytes(b"weights-1" * 1000)
    (d / keys.RESPONDERS_FILE).write_text('{"a": 0.1}')
    (d / keys.DATA_FILE).write_bytes(b"data")
    return d


def _counter(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_a_second_instance_serves_what_the_first_stored(tmp_path, run_dir):
    root = tmp_path / "cache"
    frame = pd.DataFrame({"emd": [0.5, 1.25]}, index=pd.Index(["departures", "control"], name="m"))
    values = {
        "array": (np.arange(6, dtype=np.float32).reshape(3, 2), cache.ARRAYS),
        "pair": ((np.zeros((2, 2)), np.ones(3, dtype=np.int64)), cache.ARRAYS),
        "frame": (frame, cache.FRAME),
    }
    for kind, (value, codec) in values.items():
        compute, calls = _counter(value)
        first = cache.RunCache.for_run(root, run_dir).get(kind, ("req", 1, None), compute, codec)
        again = cache.RunCache.for_run(root, run_dir).get(kind, ("req", 1, None), compute, codec)
        assert len(calls) == 1, kind  # the second instance (a new process) did not compute
        if kind == "frame":
            pd.testing.assert_frame_equal(again, frame)
        elif kind == "pair":
            assert all(np.array_equal(a, b) for a, b in zip(again, value, strict=True))
        else:
            assert np.array_equal(again, first) and again.dtype == np.float32
    other, calls = _counter(np.ones(1))
    cache.RunCache.for_run(root, run_dir).get("array", ("req", 2, None), other)
    assert calls == [1]  # another request is another entry


def test_a_changed_checkpoint_is_never_served_stale(tmp_path, run_dir):
    """Same size, same mtime, other bytes: the key hashes content, so the old entry is not
    found; so for a refitted responders.json."""
    root, model = tmp_path / "cache", run_dir / keys.MODEL_FILE
    before = cache.RunCache.for_run(root, run_dir)
    before.get("array", "r", lambda: np.zeros(2))
    st = model.stat()
    model.write_bytes(b"weights-2" * 1000)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = cache.RunCache.for_run(root, run_dir)
    assert after.key != before.key
    assert np.array_equal(after.get("array", "r", lambda: np.ones(2)), np.ones(2))
    (run_dir / keys.RESPONDERS_FILE).write_text('{"a": 0.2}')
    refit = cache.RunCache.for_run(root, run_dir)
    assert refit.key not in (before.key, after.key)


def test_nothing_is_cached_for_a_checkpoint_rewritten_since_it_was_opened(tmp_path, run_dir):
    opened = cache.stamp(run_dir)
    (run_dir / keys.MODEL_FILE).write_bytes(b"newer")
    store = cache.RunCache.for_run(tmp_path / "cache", run_dir, expect=opened)
    compute, calls = _counter(np.zeros(1))
    store.get("array", "r", compute)
    store.get("array", "r", compute)
    assert store.key is None and len(calls) == 2 and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other request"])
def test_an_unreadable_entry_is_recomputed_and_replaced(tmp_path, run_dir, damage):
    store = cache.RunCache.for_run(tmp_path / "cache", run_dir)
    value = np.arange(1000, dtype=np.float64)
    store.get("array", "r", lambda: value)
    path = store.path("array", "r")
    data = path.read_bytes()
    if damage == "other request":  # a file that is whole, but not this entry
        store.get("array", "s", lambda: value + 1)
        data = store.path("array", "s").read_bytes()
    broken = {"garbage": b"not a zip file", "truncated": data[: len(data) // 2], "empty": b""}
    path.write_bytes(broken.get(damage, data))
    errors = cache.stats["error:array"]
    compute, calls = _counter(value)
    again = store.get("array", "r", compute)
    assert calls == [1] and np.array_equal(again, value)
    assert cache.stats["error:array"] == errors + 1
    assert store.load("array", "r") is not None  # written again, whole


class _Payload:
    """Unpickling this creates ``marker`` (see test_security)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return type(self.marker).touch, (self.marker,)


def test_an_entry_holding_a_pickle_is_recomputed_without_running_it(tmp_path, run_dir):
    store, marker = cache.RunCache.for_run(tmp_path / "cache", run_dir), tmp_path / "pwned"
    store.get("array", "r", lambda: np.zeros(1))
    with open(store.path("array", "r"), "wb") as fh:  # a shared runs folder, tampered with
        np.savez(fh, a0=np.array([_Payload(marker)], dtype=object))
    with np.load(store.path("array", "r"), allow_pickle=True) as f:
        f["a0"]  # the payload is live: unpickling it runs code
    assert marker.exists()
    marker.unlink()
    assert np.array_equal(store.get("array", "r", lambda: np.ones(1)), np.ones(1))
    assert not marker.exists()
    with pytest.raises(TypeError):  # and nothing is ever written that would need pickle
        store.save("array", "o", {"a0": np.array([None], dtype=object)}, {})


def test_writes_are_atomic_under_concurrent_readers(tmp_path, run_dir):
    """Writers replace an entry while readers read it: a reader sees a whole entry or none,
    never a torn one, and no temporary file is left behind."""
    root = tmp_path / "cache"
    big = np.random.default_rng(0).normal(size=(200, 500))
    cache.RunCache.for_run(root, run_dir).get("array", "r", lambda: big)
    errors, seen, stop = cache.stats["error:array"], [], threading.Event()

    def write():
        store = cache.RunCache.for_run(root, run_dir)
        while not stop.is_set():
            store.save("array", "r", *cache.ARRAYS.encode(big))

    def read():
        store = cache.RunCache.for_run(root, run_dir)
        for _ in range(60):
            entry = store.load("array", "r")
            seen.append(entry is not None and np.array_equal(entry[0]["a0"], big))

    writers = [threading.Thread(target=write) for _ in range(2)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert all(seen) and len(seen) == 120
    assert cache.stats["error:array"] == errors
    entry = cache.RunCache.for_run(root, run_dir).path("array", "r")
    assert [p for p in root.rglob("*") if p.is_file()] == [entry]


def test_a_failed_write_leaves_no_file_and_the_value_is_still_returned(tmp_path, run_dir):
    root = tmp_path / "cache"
    root.write_text("a file where the folder should be")  # the disk refuses
    store = cache.RunCache.for_run(root, run_dir)
    assert np.array_equal(store.get("array", "r", lambda: np.ones(3)), np.ones(3))
    assert root.is_file() and not store.save("array", "r", *cache.ARRAYS.encode(np.ones(3)))


def test_entries_over_the_size_caps_are_not_kept(tmp_path, run_dir):
    root = tmp_path / "cache"
    store = cache.RunCache.for_run(root, run_dir, max_entry_bytes=1000)
    assert not store.save("array", "big", *cache.ARRAYS.encode(np.zeros(1000)))
    store = cache.RunCache.for_run(root, run_dir)
    for i in range(4):
        store.save("array", i, *cache.ARRAYS.encode(np.zeros(10_000)))  # 80 kB each
        os.utime(store.path("array", i), (1000 + i, 1000 + i))
    assert store.load("array", 0) is not None  # read last: the most recently used now
    (root / store.key / ".x.tmp").write_bytes(b"")  # left by a killed writer long ago
    os.utime(root / store.key / ".x.tmp", (0, 0))
    cache.prune(root, max_bytes=250_000)
    kept = {i for i in range(4) if store.path("array", i).exists()}
    assert kept == {0, 2, 3} and not (root / store.key / ".x.tmp").exists()


def test_tagged_json_keeps_tuples_and_tuple_keyed_dicts():
    value = {("FOXO4", "k562", 1.0): (0.25, "its own"), "x": [1, (2, None)]}
    assert cache.from_tagged(cache.to_tagged(value)) == value
    with pytest.raises(TypeError):
        cache.request_json(("a", object()))


def test_numba_cache_folder_is_set_only_before_numba_and_never_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    assert cache.use_numba_cache(tmp_path / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "numba")
    assert not cache.use_numba_cache(tmp_path / "other")  # set already: kept
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setitem(sys.modules, "numba", object())
    with pytest.warns(UserWarning, match="numba is imported"):
        assert not cache.use_numba_cache(tmp_path / "late")
    assert "NUMBA_CACHE_DIR" not in os.environ


# ------------------------------------------------------------------ explore values
def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is None and b is None or np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


@pytest.mark.parametrize("trajectory", [False, True])
def test_condition_cells_come_back_from_disk_as_they_were(tmp_path, run, trajectory):
    pert, ct = run.data.conditions[0].perturbation, run.data.conditions[0].cell_type
    cells = explore.condition_cells(run, pert, ct, n_cells=40, seed=3, trajectory=trajectory)
    store = cache.RunCache(tmp_path, "key")
    codec = explore.cells_codec(run)
    store.get("cells", cells.request, lambda: cells, codec)
    back = store.get("cells", cells.request, lambda: pytest.fail("recomputed"), codec)
    assert back is not cells and _same(back, cells)
    assert (back.simulation.x_path is not None) == trajectory


def test_a_map_from_disk_places_without_a_fit_until_a_new_cell_needs_one(tmp_path, run):
    """Fit cells keep their positions without umap; a new cell refits the seeded map, which
    lands where the first fit did, so its placement matches the original map's."""
    ct = run.data.conditions[0].cell_type
    perts = [c.perturbation for c in run.data.conditions if c.cell_type == ct][:1]
    cmap = explore.cell_map(run, perts, ct, seed=0, max_cells=300)
    store, codec = cache.RunCache(tmp_path, "key"), explore.map_codec(run)
    store.get("map", "m", lambda: cmap, codec)
    back = store.get("map", "m", lambda: pytest.fail("refitted"), codec)
    some = back.rows[:5]
    assert np.array_equal(back.coords_of(some, run.data.x[some]), cmap.coords[:5])
    assert back.reducer is None  # no fit for cells the map was fitted on
    new = run.data.x[np.setdiff1d(np.arange(len(run.data.x)), cmap.rows)[:20]]
    np.testing.assert_allclose(back.place(new), cmap.place(new), atol=1e-4)
    assert back.reducer is not None
