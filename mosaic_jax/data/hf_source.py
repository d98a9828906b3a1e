"""Hugging Face ``datasets`` as a source of documents: ``--input=hf:SOURCE[:CONFIG][:SPLIT][@TEXT_FIELD]``.

SOURCE is a hub id (``roneneldan/TinyStories``), a local folder of data files that ``datasets.load_dataset``
reads (jsonl, parquet, csv, txt, ...), or a folder written by ``Dataset.save_to_disk`` (read with
``datasets.load_from_disk``). Hub datasets and data-file folders are *streamed* (``streaming=True``): rows come
in batches and nothing is held whole on local disk or in memory. One extra part after SOURCE is a split if the
dataset has a split of that name, else a config; the default split is ``train`` (or the only split). The text
field defaults to ``--text_field`` (``a.b`` reaches into nested columns).

:class:`HFReader` has the interface of :class:`ingest.SourceReader` (``documents()``, ``position()``,
``num_docs``, ``text_bytes``, ...), so everything after the text iterator is one code path for every source.
``datasets`` is an optional dependency (extra ``[datasets]``), imported only when an ``hf:`` input is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Iterator, Optional

from mosaic_jax.data.errors import DataError

PREFIX = "hf:"
_BATCH_ROWS = 1024   # rows per Arrow batch read: amortises per-row Python overhead
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")   # written by DatasetDict / Dataset.save_to_disk


def is_spec(text: str) -> bool:
    return text.startswith(PREFIX)


def is_saved_dataset(folder: str) -> bool:
    """True for a folder written by ``save_to_disk`` (such a folder is read with load_from_disk, never walked)."""
    return any(os.path.isfile(os.path.join(folder, m)) for m in _SAVE_TO_DISK_MARKERS)


def parse_spec(spec: str) -> tuple[str, list[str], Optional[str]]:
    """``hf:SOURCE[:A][:B][@FIELD]`` → (SOURCE, [A, B], FIELD or None). Raises DataError on a malformed spec."""
    body = spec[len(PREFIX):] if is_spec(spec) else spec
    body, at, field = body.rpartition("@") if "@" in body else (body, "", "")
    if at and not field:
        raise DataError(f"{spec}: empty text field after '@'")
    source, *parts = body.split(":")
    if not source or len(parts) > 2 or any(not p for p in parts):
        raise DataError(f"{spec}: expected hf:ORG/NAME[:CONFIG][:SPLIT][@TEXT_FIELD] (or a local dataset folder)")
    if not os.path.isdir(source) and not _HUB_ID.match(source):
        raise DataError(f"{spec}: {source!r} is neither a local folder nor a hub id (ORG/NAME)")
    return source, parts, field or None


def _datasets(spec: str) -> Any:
    try:
        import datasets   # optional: extra [datasets]
    except ImportError:
        raise DataError(f"{spec}: hf: inputs need the datasets package (pip install 'mosaic_jax[datasets]')") from None
    datasets.disable_progress_bars()   # prepare shows its own progress; datasets' bars would interleave with it
    return datasets


def _folder_files(folder: str) -> list[str]:
    """Every non-hidden file under ``folder``, in a stable order."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return found


def _folder_sha256(folder: str) -> str:
    """Content hash of every file in ``folder`` (relative names and bytes)."""
    h = hashlib.sha256()
    for path in _folder_files(folder):
        h.update(os.path.relpath(path, folder).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _saved_without_rows(folder: str) -> bool:
    """A Dataset saved with 0 rows: its state.json lists no Arrow files."""
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            return json.load(f).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


class HFReader:
    """Documents of one split of one dataset. Opening it resolves config, split and field and reads the first
    row, so a bad spec fails in seconds, before any long work."""

    format = "hf"
    separator = None

    def __init__(self, spec: str, text_field: str = "text") -> None:
        self.path = spec
        self.num_docs = self.text_bytes = self.replaced_bytes = 0
        self.source, parts, field = parse_spec(spec)
        self.text_field = field or text_field
        self._datasets = _datasets(spec)
        self.local = os.path.isdir(self.source)
        self.saved = self.local and is_saved_dataset(self.source)
        self.config, self.split, self._ds = self._open(parts)
        self.column = self.text_field.split(".")[0]
        self._check_first_row()
        self._ds = self._ds.select_columns([self.column])   # other columns are never decoded
        self.text_sha256 = ""   # of the documents read (UTF-8, each followed by NUL), once documents() has run

    # -- opening -----------------------------------------------------------------------------------------------
    def _load(self, config: Optional[str]) -> Any:
        """The dataset's splits as a mapping name → (Iterable)Dataset."""
        d = self._datasets
        try:
            if self.saved:
                if config is not None:
                    raise DataError(f"{self.path}: a save_to_disk folder has no configs (got {config!r})")
                if _saved_without_rows(self.source):   # load_from_disk itself fails on those
                    raise DataError(f"{self.path}: dataset {self.source} has no rows")
                loaded = d.load_from_disk(self.source)
                return loaded if isinstance(loaded, d.DatasetDict) else {None: loaded}
            return d.load_dataset(self.source, config, streaming=True)
        except DataError:
            raise
        except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
            where = "local folder" if self.local else "hub dataset"
            raise DataError(f"{self.path}: cannot open {where} {self.source!r}: {e}") from None

    def _open(self, parts: list[str]) -> tuple[Optional[str], Optional[str], Any]:
        config: Optional[str] = None
        split: Optional[str] = None
        if len(parts) == 2:
            config, split = parts
        elif len(parts) == 1:   # a split of the default config, if it has one by that name; else a config
            try:
                default = self._load(None)
            except DataError:
                if self.saved:
                    raise
                default = {}   # e.g. a hub dataset that needs a config
            if parts[0] in default:
                return None, parts[0], default[parts[0]]
            if self.saved:
                known = "a single saved Dataset has none" if None in default else ", ".join(default)
                raise DataError(f"{self.path}: unknown split {parts[0]!r} (splits: {known})")
            config = parts[0]
        splits = self._load(config)
        if split is None:
            if None in splits:   # a single saved Dataset
                return config, None, splits[None]
            if "train" in splits or len(splits) == 1:
                split = "train" if "train" in splits else next(iter(splits))
            else:
                raise DataError(f"{self.path}: several splits and none is 'train'; name one "
                                f"(splits: {', '.join(splits)})")
        if split not in splits:
            raise DataError(f"{self.path}: unknown split {split!r} (splits: {', '.join(map(str, splits))})")
        return config, split, splits[split]

    def _check_first_row(self) -> None:
        columns = self._ds.column_names
        empty = isinstance(self._ds, self._datasets.Dataset) and len(self._ds) == 0   # iter() fails on those
        first = None if empty else next(iter(self._ds.iter(batch_size=1)), None)
        if first is None or (columns is None and not first):
            raise DataError(f"{self.path}: dataset {self._where()} has no rows")
        columns = list(columns if columns is not None else first)
        if self.column not in columns:
            raise DataError(f"{self.path}: unknown text field {self.text_field!r} (columns: {', '.join(columns)})")
        self._text(first[self.column][0], 0)   # a non-string field fails now, not after hours

    def _where(self) -> str:
        return ":".join(str(x) for x in (self.source, self.config, self.split) if x is not None)

    # -- reading -----------------------------------------------------------------------------------------------
    def _text(self, value: Any, row: int) -> str:
        for key in self.text_field.split(".")[1:]:   # "a.b": a struct column
            if not isinstance(value, dict) or key not in value:
                keys = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
                raise DataError(f"{self.path}: row {row}: missing text field {self.text_field!r} (has: {keys})")
            value = value[key]
        if not isinstance(value, str):
            raise DataError(f"{self.path}: row {row}: field {self.text_field!r} is {type(value).__name__}, "
                            "expected a string")
        return value

    def identity(self) -> str:
        """What the prepared data's fingerprint holds for this input: for a local folder the sha256 of its files
        (and the resolved config/split/field); for a hub dataset the resolved spec only (its content is not
        known before streaming it; the manifest records ``text_sha256`` of what was read)."""
        what = {"source": self.source, "config": self.config, "split": self.split, "field": self.text_field}
        if self.local:
            what = {**what, "source": "local", "files": _folder_sha256(self.source)}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def manifest_fields(self) -> dict[str, Any]:
        """What the manifest records of an hf: input beyond a file's fields."""
        return {"config": self.config, "split": self.split, "text_field": self.text_field,
                "text_sha256": self.text_sha256}

    def size_estimate(self) -> Optional[int]:
        """Bytes this input will yield, where ``datasets`` knows it (for progress and the tokenizer sample)."""
        if self.saved:
            return int(self._ds.data.nbytes)
        info = getattr(self._ds, "info", None)
        splits = getattr(info, "splits", None) or {}
        split = splits.get(self.split) if self.split is not None else None
        if split is not None and split.num_bytes:
            return int(split.num_bytes)
        if self.local:   # the folder's bytes: close for text/jsonl, an underestimate for compressed parquet
            return sum(os.path.getsize(p) for p in _folder_files(self.source))
        return None

    def position(self) -> int:
        """Text bytes read so far: the progress unit of hf inputs."""
        return self.text_bytes

    def documents(self) -> Iterator[str]:
        self.num_docs = self.text_bytes = 0   # a reader may be iterated more than once
        digest = hashlib.sha256()
        row = 0
        for batch in self._ds.iter(batch_size=_BATCH_ROWS):
            for value in batch[self.column]:
                text = self._text(value, row)
                row += 1
                encoded = text.encode("utf-8")   # Arrow strings are valid UTF-8: nothing to replace
                self.text_bytes += len(encoded)
                digest.update(encoded + b"\0")
                if text.strip():   # as JSONL: blank documents are dropped
                    self.num_docs += 1
                    yield text
        self.text_sha256 = digest.hexdigest()
        if row == 0:
            raise DataError(f"{self.path}: dataset {self._where()} has no rows")
