"""Loader: batches are a pure function of (seed, step), process slices recombine exactly, grain iterators
resume exactly (also with worker processes), and packing never crosses a document without a segment change."""
import numpy as np
import pytest

from mosaic_jax.data import loader, store
from mosaic_jax.data.errors import DataError


@pytest.fixture(scope="module")
def ds(prepared_sp) -> store.PreparedDataset:
    return store.open_prepared(str(prepared_sp))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("packing", [False, True])
def test_batch_is_a_pure_function_of_seed_and_step(prepared_sp, ds, packing):
    src = loader.BatchSource(ds, seq_len=32, global_batch=8, seed=3, packing=packing)
    batch = src.global_batch_at(7)
    keys = {"inputs", "targets"} | ({"segment_ids"} if packing else set())   # the typed batch (data/batch.py)
    assert set(batch) == keys
    for v in batch.values():
        assert v.shape == (8, 32) and v.dtype == np.int32
    # A "restart": everything reopened from disk.
    again = loader.BatchSource(store.open_prepared(str(prepared_sp)), 32, 8, seed=3, packing=packing)
    assert _equal(again.global_batch_at(7), batch)
    assert not np.array_equal(src.global_batch_at(8)["inputs"], batch["inputs"])
    other_seed = loader.BatchSource(ds, 32, 8, seed=4, packing=packing)
    assert not np.array_equal(other_seed.global_batch_at(7)["inputs"], batch["inputs"])


@pytest.mark.parametrize("packing", [False, True])
def test_process_slices_recombine_for_1_2_4_processes(ds, packing):
    src = loader.BatchSource(ds, seq_len=16, global_batch=8, seed=0, packing=packing)
    for step in (0, 5, 123456):
        whole = src.global_batch_at(step)
        for n in (1, 2, 4):
            parts = [src.process_batch_at(step, i, n) for i in range(n)]
            assert all(p["inputs"].shape == (8 // n, 16) for p in parts)
            assert _equal({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)
    with pytest.raises(ValueError, match="not divisible"):
        src.process_batch_at(0, 0, 3)


def test_windows_are_the_reference_sampling(ds):
    T = 24
    src = loader.BatchSource(ds, seq_len=T, global_batch=64, seed=1)
    flat = np.asarray(ds.tokens)
    starts = []
    for step in range(30):
        batch = src.global_batch_at(step)
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])  # shifted by one
        hashes = loader.row_hashes(1, step, np.arange(64, dtype=np.uint64))
        row_starts = (hashes % np.uint64(ds.num_tokens - T)).astype(np.int64)
        for row, s in enumerate(row_starts[:4]):
            np.testing.assert_array_equal(batch["inputs"][row], flat[s:s + T])
            np.testing.assert_array_equal(batch["targets"][row], flat[s + 1:s + T + 1])
        starts.append(row_starts)
    starts = np.concatenate(starts) / (ds.num_tokens - T)
    # Uniform on [0, 1): mean 1/2, every decile hit.
    assert abs(starts.mean() - 0.5) < 0.05 and len(np.unique((starts * 10).astype(int))) == 10


def test_packing_never_crosses_documents_without_a_segment_change(ds):
    T = 48
    src = loader.BatchSource(ds, seq_len=T, global_batch=32, seed=5, packing=True)
    eos = ds.eos_id
    offsets = np.asarray(ds.doc_offsets)
    flat = np.asarray(ds.tokens)
    for step in range(20):
        b = src.global_batch_at(step)
        x, y, seg = b["inputs"], b["targets"], b["segment_ids"]
        assert set(b) == {"inputs", "targets", "segment_ids"}   # the typed batch (data/batch.py)
        assert (seg[:, 0] == 1).all()
        after_eos = x[:, :-1] == eos  # the next input token starts another document
        changed = seg[:, 1:] != seg[:, :-1]
        np.testing.assert_array_equal(changed, after_eos)
        # No target is taken across a document boundary; all others are the next token.
        np.testing.assert_array_equal(y == -1, x == eos)
        np.testing.assert_array_equal(y[:, :-1][~after_eos], x[:, 1:][~after_eos])
        # Rows start at a document start, or at a multiple of T inside a long document.
        for row in x:
            start = _find(flat, row)
            doc_start = offsets[np.searchsorted(offsets, start, side="right") - 1]
            assert (start - doc_start) % T == 0


def _find(flat: np.ndarray, row: np.ndarray) -> int:
    """First start of ``row`` in the token stream (narrowing the candidates one token at a time)."""
    candidates = np.flatnonzero(flat[: len(flat) - len(row) + 1] == row[0])
    for j in range(1, len(row)):
        candidates = candidates[flat[candidates + j] == row[j]]
    assert len(candidates), "row not found in the token stream"
    return int(candidates[0])


def test_packing_reaches_the_middle_of_long_documents(prepared_byte):
    ds = store.open_prepared(str(prepared_byte))  # byte-level stories: ~800 tokens, far longer than T
    src = loader.BatchSource(ds, seq_len=64, global_batch=64, seed=0, packing=True)
    flat = np.asarray(ds.tokens)
    offsets = np.asarray(ds.doc_offsets)
    doc_starts = set(offsets.tolist())
    inside = 0
    for step in range(5):
        for row in src.global_batch_at(step)["inputs"]:
            start = _find(flat, row)
            doc_start = offsets[np.searchsorted(offsets, start, side="right") - 1]
            assert (start - doc_start) % 64 == 0
            inside += start not in doc_starts
    assert inside > 100  # most rows start inside a story, at a 64-aligned piece


def test_packing_pads_past_the_end_of_the_data(tmp_path):
    writer = store.SplitWriter(str(tmp_path), "train", np.dtype(np.uint16), 1 << 20)
    lengths = np.array([5, 9, 4])
    tokens = np.concatenate([np.append(np.arange(10, 10 + n - 1), 1) for n in lengths])
    writer.add(tokens, lengths)
    manifest = {"format": store.FORMAT_VERSION, "dtype": "uint16", "splits": {"train": writer.close()},
                "tokenizer": {"hash": "x", "vocab_size": 260, "eos_id": 1, "bos_id": 2, "pad_id": 0}}
    ds = store.PreparedDataset(str(tmp_path), "train", manifest)
    src = loader.BatchSource(ds, seq_len=8, global_batch=64, seed=0, packing=True)
    b = src.global_batch_at(0)
    padded = b["segment_ids"] == 0
    assert padded.any()  # with 18 tokens and T=8, rows that start late run off the end
    assert (b["inputs"][padded] == 0).all() and (b["targets"][padded] == -1).all()
    last_real = np.argmax(padded, axis=1) - 1
    rows = np.flatnonzero(padded.any(axis=1))
    assert (b["targets"][rows, last_real[rows]] == -1).all()  # no target taken from the padding


def test_window_longer_than_the_data_is_refused(prepared_sp):
    val = store.open_prepared(str(prepared_sp), "validation")
    with pytest.raises(DataError, match=r"validation\): a window of seq_len\+1 = .* is longer than the data"):
        loader.BatchSource(val, seq_len=val.num_tokens, global_batch=2, seed=0)


def test_grain_iterator_resumes_exactly(ds):
    src = loader.BatchSource(ds, seq_len=16, global_batch=4, seed=9, packing=True)
    first = loader.make_iterator(src, start_step=0, num_steps=6)
    batches = [next(first) for _ in range(6)]
    for step, batch in enumerate(batches):
        assert _equal(batch, src.global_batch_at(step))
    resumed = loader.make_iterator(src, start_step=4, process_index=1, process_count=2)
    for step in (4, 5):
        assert _equal(next(resumed), src.process_batch_at(step, 1, 2))


def test_grain_worker_processes_give_the_same_batches(ds):
    src = loader.BatchSource(ds, seq_len=16, global_batch=4, seed=2)
    it = loader.make_iterator(src, start_step=10, process_index=0, process_count=2, num_workers=2)
    try:
        for step in range(10, 15):
            assert _equal(next(it), src.process_batch_at(step, 0, 2))
    finally:
        it.close()


def test_grain_iterator_state_round_trip(ds):
    # Trainers that save grain's own iterator state (orbax grain.checkpoint) resume exactly too.
    src = loader.BatchSource(ds, seq_len=8, global_batch=2, seed=0)
    it = loader.make_iterator(src, start_step=100)
    for _ in range(3):
        next(it)
    state = it.get_state()
    restored = loader.make_iterator(src, start_step=100)
    restored.set_state(state)
    assert _equal(next(restored), src.global_batch_at(103))


@pytest.mark.parametrize("packing", [False, True])
def test_token_ids_above_the_vocabulary_are_named(tmp_path, packing):
    """Issue 13 item 6: an id past the vocabulary inside the shards made training stop with `loss is nan at
    step 1`; the loader now names the data folder, the id and the vocabulary."""
    writer = store.SplitWriter(str(tmp_path), "train", np.dtype(np.uint16), 1 << 20)
    tokens = np.append(np.full(63, 10), 1)
    tokens[40] = 60_000                              # a corrupt id, far past the manifest's 260
    writer.add(tokens, np.array([64]))
    manifest = {"format": store.FORMAT_VERSION, "dtype": "uint16", "splits": {"train": writer.close()},
                "tokenizer": {"hash": "x", "vocab_size": 260, "eos_id": 1, "bos_id": 2, "pad_id": 0}}
    ds = store.PreparedDataset(str(tmp_path), "train", manifest)
    src = loader.BatchSource(ds, seq_len=32, global_batch=16, seed=0, packing=packing)
    it = loader.make_iterator(src, 0, num_steps=4)
    with pytest.raises(DataError, match=r"token id 60000 .* not below the manifest's vocab_size 260"):
        for _ in range(4):   # 16 rows of 33 tokens out of 64: the corrupt id is in the first batch w.h.p.
            next(it)
