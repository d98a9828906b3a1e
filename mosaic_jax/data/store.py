"""The prepared token store: flat token shards per split, document offsets, and a JSON manifest.

Layout of a prepared folder::

    manifest.json           written last; its presence means "complete"
    tokenizer.model         the sentencepiece model (sentencepiece tokenizers only), so the folder is self-contained
    train-00000.bin ...     raw little-endian uint16/uint32 tokens; EOS after every document; shards end on documents
    train.docs.npy          int64 offsets of the split's documents in its flat token stream (num_docs + 1 entries)
    validation-00000.bin, validation.docs.npy   (when the split is not empty)

A split's shards concatenated form one flat token stream; ``PreparedDataset.tokens`` exposes it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from mosaic_jax.data import tokenizers
from mosaic_jax.data.errors import DataError
from mosaic_jax.io import data_cache, storage

FORMAT_VERSION = "mosaic_jax.prepared/1"
MANIFEST_FILE = tokenizers.MANIFEST_FILE
SPLITS = ("train", "validation")
_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """uint16 when the vocabulary fits, else uint32 (``requested`` may force one; it must fit)."""
    if requested == "auto":
        dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    elif requested in _DTYPES:
        dtype = np.dtype(_DTYPES[requested])
    else:
        raise DataError(f"token dtype {requested!r}: choose auto, {', '.join(_DTYPES)}")
    # Batches are int32, so ids must also stay below 2**31.
    limit = min(int(np.iinfo(dtype).max) + 1, 1 << 31)
    if vocab_size > limit:
        raise DataError(f"vocabulary of {vocab_size} ids is too large for the token dtype {dtype.name} (at most {limit} ids)")
    return dtype


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


class SplitWriter:
    """Appends documents to one split's shards, hashing each shard as it is written.

    A shard is closed at the first document end at or past ``shard_tokens``, so no document spans shards.
    """

    def __init__(self, folder: str, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise DataError(f"shard size {shard_tokens} tokens: must be positive")
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype), shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.doc_lengths: list[np.ndarray] = []
        self._file: Any = None
        self._hash: Any = None
        self._shard_tokens = self._shard_docs = 0

    def add(self, tokens: np.ndarray, doc_lengths: np.ndarray) -> None:
        """Append documents: ``tokens`` is their concatenation, ``doc_lengths`` their token counts."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<"))
        ends = np.cumsum(doc_lengths, dtype=np.int64)
        assert len(ends) == 0 or ends[-1] == len(tokens), "doc_lengths must sum to len(tokens)"
        self.doc_lengths.append(np.asarray(doc_lengths, np.int64))
        done_docs, done_tokens = 0, 0
        while done_docs < len(ends):
            if self._file is None:
                self._open_shard()
            room = self.shard_tokens - self._shard_tokens
            # Docs up to and including the one that fills the shard go in this shard.
            last = int(np.searchsorted(ends[done_docs:] - done_tokens, room, side="left"))
            take = min(last + 1, len(ends) - done_docs)
            end_tokens = int(ends[done_docs + take - 1])
            chunk = tokens[done_tokens:end_tokens]
            self._file.write(chunk.tobytes())
            self._hash.update(chunk.tobytes())
            self._shard_tokens += len(chunk)
            self._shard_docs += take
            done_docs, done_tokens = done_docs + take, end_tokens
            if self._shard_tokens >= self.shard_tokens:
                self._close_shard()

    def _open_shard(self) -> None:
        self._file = open(os.path.join(self.folder, shard_name(self.split, len(self.shards))), "wb")
        self._hash = hashlib.sha256()
        self._shard_tokens = self._shard_docs = 0

    def _close_shard(self) -> None:
        self._file.close()
        self.shards.append({
            "file": shard_name(self.split, len(self.shards)),
            "num_tokens": self._shard_tokens,
            "num_docs": self._shard_docs,
            "sha256": self._hash.hexdigest(),
        })
        self._file = None

    @property
    def num_tokens(self) -> int:
        return sum(s["num_tokens"] for s in self.shards) + (self._shard_tokens if self._file else 0)

    def close(self) -> dict[str, Any] | None:
        """Finish the split; returns its manifest entry, or None if it received no documents."""
        if self._file is not None:
            self._close_shard()
        if not self.shards:
            return None
        lengths = np.concatenate(self.doc_lengths)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        offsets_file = f"{self.split}.docs.npy"
        np.save(os.path.join(self.folder, offsets_file), offsets)
        return {
            "num_tokens": int(offsets[-1]),
            "num_docs": len(lengths),
            "doc_offsets": offsets_file,
            "doc_offsets_sha256": sha256_file(os.path.join(self.folder, offsets_file)),
            "shards": self.shards,
        }


class ShardedTokens:
    """A read-only flat view over several shard memmaps, indexable like a 1-D array (int or step-1 slice)."""

    def __init__(self, shards: list[np.memmap]) -> None:
        self._shards = shards
        self._starts = np.zeros(len(shards) + 1, np.int64)
        np.cumsum([len(s) for s in shards], out=self._starts[1:])
        self.dtype = shards[0].dtype
        self.shape = (int(self._starts[-1]),)
        self.ndim = 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return np.asarray(self)[index]
            return self.read(start, max(stop - start, 0))
        i = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"token index {index} out of range for {len(self)} tokens")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shards[k][i - self._starts[k]]

    def read(self, start: int, length: int) -> np.ndarray:
        parts = []
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while length > 0 and k < len(self._shards):
            lo = start - int(self._starts[k])
            part = self._shards[k][lo:lo + length]
            parts.append(part)
            start, length, k = start + len(part), length - len(part), k + 1
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate(self._shards)
        return out if dtype is None else out.astype(dtype)


def read_manifest(path: str) -> dict[str, Any]:
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.isdir(path):
        raise DataError(f"{path}: prepared-data folder not found (run python -m mosaic_jax.prepare_data)")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not a prepared-data folder (no {MANIFEST_FILE}; run python -m mosaic_jax.prepare_data)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{manifest_path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{manifest_path}: field format is {found!r}, expected {FORMAT_VERSION!r}")
    return manifest


class PreparedDataset:
    """One split of a prepared folder. Memmaps open lazily and are dropped on pickling (workers reopen)."""

    def __init__(self, path: str, split: str, manifest: dict[str, Any]) -> None:
        self.path, self.split, self.manifest = path, split, manifest
        self.info: dict[str, Any] = manifest["splits"][split]
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self._tokens: Any = None
        self._doc_offsets: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None, "_doc_offsets": None}

    def __repr__(self) -> str:
        return f"PreparedDataset({self.path!r}, {self.split!r}, num_tokens={self.num_tokens}, num_docs={self.num_docs})"

    num_tokens = property(lambda self: int(self.info["num_tokens"]))
    num_docs = property(lambda self: int(self.info["num_docs"]))
    tokenizer_hash = property(lambda self: str(self.manifest["tokenizer"]["hash"]))
    vocab_size = property(lambda self: int(self.manifest["tokenizer"]["vocab_size"]))
    eos_id = property(lambda self: int(self.manifest["tokenizer"]["eos_id"]))
    bos_id = property(lambda self: int(self.manifest["tokenizer"]["bos_id"]))
    pad_id = property(lambda self: int(self.manifest["tokenizer"]["pad_id"]))

    @property
    def tokens(self) -> Any:
        """All tokens of the split: an ``np.memmap`` (a :class:`ShardedTokens` view if several shards)."""
        if self._tokens is None:
            maps = [
                np.memmap(os.path.join(self.path, s["file"]), dtype=self.dtype, mode="r", shape=(s["num_tokens"],))
                for s in self.info["shards"]
            ]
            self._tokens = maps[0] if len(maps) == 1 else ShardedTokens(maps)
        return self._tokens

    @property
    def doc_offsets(self) -> np.ndarray:
        """int64 start of every document in ``tokens``, plus ``num_tokens`` at the end."""
        if self._doc_offsets is None:
            self._doc_offsets = np.load(os.path.join(self.path, self.info["doc_offsets"]), mmap_mode="r")
        return self._doc_offsets

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start:start+length] as an in-memory array (shorter at the end of the data)."""
        tokens = self.tokens
        if isinstance(tokens, ShardedTokens):
            return tokens.read(start, length)
        return np.array(tokens[start:start + length])

    def tokenizer(self) -> tokenizers.Tokenizer:
        return tokenizers.load_tokenizer(self.path)


def check_files(path: str, manifest: dict[str, Any]) -> None:
    """Cheap completeness check: every file the manifest names exists with the right size."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split, info in manifest["splits"].items():
        offsets = os.path.join(path, info["doc_offsets"])
        if not os.path.isfile(offsets):
            raise DataError(f"{offsets}: missing (split {split}); the prepared folder is incomplete")
        for shard in info["shards"]:
            file = os.path.join(path, shard["file"])
            want = shard["num_tokens"] * itemsize
            have = os.path.getsize(file) if os.path.isfile(file) else None
            if have != want:
                raise DataError(f"{file}: expected {want} bytes, found {'no file' if have is None else have}")


def open_prepared(path: str, split: str = "train") -> PreparedDataset:
    """Open one split of a prepared folder; a clear DataError naming the path if it is missing or invalid."""
    if split not in SPLITS:
        raise DataError(f"{path}: unknown split {split!r} (choose {' or '.join(SPLITS)})")
    path = data_cache.local_copy(path)   # gs://: the local cache copy (mosaic_jax/io/data_cache.py)
    manifest = read_manifest(path)
    if split not in manifest.get("splits", {}):
        raise DataError(f"{path}: split {split!r} is empty or absent (prepared with splits {sorted(manifest.get('splits', {}))})")
    check_files(path, {**manifest, "splits": {split: manifest["splits"][split]}})
    return PreparedDataset(path, split, manifest)


def verify(path: str) -> None:
    """Full integrity check: recompute every shard's sha256 against the manifest."""
    path = data_cache.local_copy(path)
    manifest = read_manifest(path)
    check_files(path, manifest)
    for info in manifest["splits"].values():
        for item in [*info["shards"], {"file": info["doc_offsets"], "sha256": info["doc_offsets_sha256"]}]:
            file = os.path.join(path, item["file"])
            if sha256_file(file) != item["sha256"]:
                raise DataError(f"{file}: sha256 does not match the manifest (corrupt or modified)")


def sha256_file(path: str) -> str:
    """sha256 of a local file or a gs:// object (streamed)."""
    digest = hashlib.sha256()
    with storage.path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
