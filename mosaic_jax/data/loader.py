"""Batches from a prepared split: the global batch of step s is a pure function of (seed, s).

Row r of step s starts at ``hash(seed, s, r) mod n`` (a splitmix64 counter hash), so any process computes
its own rows [i·B/n, (i+1)·B/n) without touching the others, a restart at step s reproduces the batch
exactly, and the result does not depend on the number of processes or prefetch workers.

* ``packing=False`` (the reference): a window of T+1 tokens at a uniform random start in [0, N-T-1],
  crossing documents freely (EOS marks the boundary). inputs = window[:-1], targets = window[1:].
* ``packing=True`` (document-wise masking): a token position p is drawn uniformly and the row starts at
  the beginning of p's document, or, for documents longer than T, at the T-aligned piece holding p (so
  every token stays reachable). The row runs on through the following documents and is cut at T+1
  tokens. Every document in the row gets its own segment id (1, 2, ...; 0 = padding past the end of the
  data) and positions restart at 0 in each segment. A target that would cross into another segment (the
  token after EOS) or into padding is -1, the ignore index.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from typing import Iterator

import numpy as np
from absl import flags

from mosaic_jax.data import store
from mosaic_jax.data.batch import IGNORE, Batch
from mosaic_jax.data.errors import DataError

_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(x_N: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche of uint64 (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        x_N = x_N + np.uint64(_GOLDEN)
        x_N = (x_N ^ (x_N >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x_N = (x_N ^ (x_N >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x_N ^ (x_N >> np.uint64(31))


def row_hashes(seed: int, step: int, rows_R: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, step, row) for each row: the only randomness in the loader."""
    key = _mix64(np.array([seed], np.uint64))
    key = _mix64(key ^ np.array([step], np.uint64))
    return _mix64(key ^ rows_R.astype(np.uint64))


class BatchSource:
    """Random-access batches of a prepared split. Picklable (memmaps reopen in worker processes)."""

    def __init__(
        self, ds: store.PreparedDataset, seq_len: int, global_batch: int, seed: int, packing: bool = False
    ) -> None:
        if seq_len < 1 or global_batch < 1:
            raise DataError(f"{ds.path}: seq_len ({seq_len}) and global_batch ({global_batch}) must be positive")
        if seed < 0:
            raise DataError(f"{ds.path}: seed {seed} must be non-negative")
        if seq_len + 1 > ds.num_tokens:
            raise DataError(
                f"{ds.path} ({ds.split}): a window of seq_len+1 = {seq_len + 1} tokens is longer than the data "
                f"({ds.num_tokens} tokens)"
            )
        self.ds, self.seq_len, self.global_batch, self.seed, self.packing = ds, seq_len, global_batch, seed, packing

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def global_batch_at(self, step: int) -> Batch:
        return self.rows_at(step, 0, self.global_batch)

    def process_batch_at(self, step: int, process_index: int, process_count: int) -> Batch:
        """Rows [i·B/n, (i+1)·B/n) of the global batch of ``step``, computed without the other rows."""
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if self.global_batch % process_count:
            raise ValueError(f"global_batch {self.global_batch} is not divisible by process_count {process_count}")
        rows = self.global_batch // process_count
        return self.rows_at(step, process_index * rows, (process_index + 1) * rows)

    def rows_at(self, step: int, lo: int, hi: int) -> Batch:
        if step < 0:
            raise ValueError(f"step {step} must be non-negative")
        hash_R = row_hashes(self.seed, step, np.arange(lo, hi, dtype=np.uint64))
        batch = self._packed(hash_R) if self.packing else self._windows(hash_R)
        self._check_ids(batch, step)
        return batch

    def _check_ids(self, batch: dict[str, np.ndarray], step: int) -> None:
        """Every id must be below the vocabulary: a larger one would index past the embedding table and turn
        the loss into NaN far from its cause (the data, not training). Costs one max per batch."""
        top = max(int(batch["inputs"].max(initial=0)), int(batch["targets"].max(initial=0)))
        if top >= self.ds.vocab_size:
            raise DataError(
                f"{self.ds.path} ({self.ds.split}): token id {top} in the batch of step {step} is not below the "
                f"manifest's vocab_size {self.ds.vocab_size}; the shards do not match the manifest (check with "
                f"python -m mosaic_jax.prepare_data --verify --out={self.ds.path})"
            )

    def _windows(self, hash_R: np.ndarray) -> Batch:
        T = self.seq_len
        starts_R = (hash_R % np.uint64(self.ds.num_tokens - T)).astype(np.int64)  # start in [0, N-T-1]
        window_RT1 = np.empty((len(starts_R), T + 1), np.int32)
        for r, s in enumerate(starts_R):
            window_RT1[r] = self.ds.read(int(s), T + 1)
        return {"inputs": np.ascontiguousarray(window_RT1[:, :-1]), "targets": np.ascontiguousarray(window_RT1[:, 1:])}

    def _packed(self, hash_R: np.ndarray) -> Batch:
        T, N = self.seq_len, self.ds.num_tokens
        offsets_D1 = self.ds.doc_offsets
        point_R = (hash_R % np.uint64(N)).astype(np.int64)
        doc_R = np.searchsorted(offsets_D1, point_R, side="right") - 1
        doc_start_R = np.asarray(offsets_D1[doc_R])
        # Pieces of T tokens, so a piece's window of T+1 ends on the next piece's first token (same document).
        starts_R = doc_start_R + (point_R - doc_start_R) // T * T
        R = len(starts_R)
        window_RT1 = np.full((R, T + 1), self.ds.pad_id, np.int32)
        for r, s in enumerate(starts_R):
            chunk = self.ds.read(int(s), T + 1)
            window_RT1[r, : len(chunk)] = chunk
        # Document starts strictly inside each window, as (row, column) pairs (ragged, so flattened).
        first_R = np.searchsorted(offsets_D1, starts_R, side="right")
        count_R = np.searchsorted(offsets_D1, starts_R + T, side="right") - first_R
        row_M = np.repeat(np.arange(R), count_R)
        doc_M = np.arange(len(row_M)) - np.repeat(np.cumsum(count_R) - count_R, count_R) + np.repeat(first_R, count_R)
        col_M = np.asarray(offsets_D1[doc_M]) - starts_R[row_M]
        new_doc_RT1 = np.zeros((R, T + 1), bool)
        new_doc_RT1[row_M, col_M] = True
        seg_RT1 = np.cumsum(new_doc_RT1, axis=1, dtype=np.int32)
        seg_RT1 += 1
        col_T1 = np.arange(T + 1, dtype=np.int32)
        valid_RT1 = starts_R[:, None] + col_T1 < N  # past the end of the data: padding
        seg_RT1[~valid_RT1] = 0
        seg_in_RT, seg_out_RT = seg_RT1[:, :-1], seg_RT1[:, 1:]
        same_RT = (seg_in_RT == seg_out_RT) & (seg_in_RT > 0)
        return {
            "inputs": np.ascontiguousarray(window_RT1[:, :-1]),
            "targets": np.where(same_RT, window_RT1[:, 1:], np.int32(IGNORE)),
            "segment_ids": np.ascontiguousarray(seg_in_RT),
        }


class _Steps:
    """A random-access source of step numbers start, start+1, ... (grain slices it across workers)."""

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return self.start + int(index)


class _ProcessBatch:
    """step → this process's batch. A module-level class so spawned grain workers can unpickle it."""

    def __init__(self, src: BatchSource, process_index: int, process_count: int) -> None:
        self.src, self.process_index, self.process_count = src, process_index, process_count

    def __call__(self, step: int) -> Batch:
        return self.src.process_batch_at(step, self.process_index, self.process_count)


def make_iterator(
    src: BatchSource,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    *,
    num_steps: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """A grain iterator over this process's batches for steps start_step, start_step+1, ...

    Resuming is making a new iterator with ``start_step`` = the saved step. ``num_workers > 0`` computes
    batches in that many spawned worker processes (grain ``mp_prefetch``); the order is unchanged.
    ``num_steps`` bounds the iterator (default: practically endless). Workers end when this process dies, even
    by SIGKILL (`_die_with_parent`).
    """
    import grain   # here: grain imports jax (~3 s), which data preparation and its spawned workers never need

    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if src.global_batch % process_count:
        raise ValueError(f"global_batch {src.global_batch} is not divisible by process_count {process_count}")
    steps = grain.MapDataset.source(_Steps(start_step, num_steps if num_steps is not None else 1 << 40))
    dataset = steps.map(_ProcessBatch(src, process_index, process_count)).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(prefetch, 1))
    )
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1)),
            worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    return iter(dataset)


def _ensure_absl_flags_parsed() -> None:
    """grain's mp_prefetch reads absl flags; outside absl.app.run they are unparsed and reading raises.
    Marking them parsed keeps every flag at its default, which is what a non-absl program means."""

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _die_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1, poll_s: float = 0.2) -> None:
    """In a grain worker: exit as soon as `parent_pid` (the trainer) is gone, e.g. SIGKILLed or OOM-killed, instead
    of living on as an orphan holding its memory.

    Why a watchdog thread and not prctl(PR_SET_PDEATHSIG): grain starts its workers from one of its own threads, and
    the parent-death signal fires when the *thread* that started the child exits, not the process. An orphan is
    re-parented (to init or a subreaper), so getppid() changing is the portable sign that the parent died."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)   # no clean-up to wait for: the consumer of our batches is gone

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
