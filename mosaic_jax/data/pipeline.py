"""prepare(): text inputs → tokenizer → a prepared folder (see store.py). The CLI is mosaic_jax/prepare_data.py.

Inputs are files (ingest.SourceReader) or ``hf:`` datasets (hf_source.HFReader); both are iterators of texts, and
everything after them is one code path.
Steps: expand and hash the inputs; stop early if the output already holds the same preparation (no-op) or
refuse if it holds a different one; sniff every file (bad files fail before the long work); train a
sentencepiece model on a seeded sample if asked; tokenize in worker processes in bounded, ordered chunks;
write shards and offsets into a temporary folder, the manifest last, then rename it into place.
The output never depends on the number of workers.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from mosaic_jax.data import hf_source, ingest, store, tokenizers
from mosaic_jax.data.errors import DataError
from mosaic_jax.io import storage

_CHUNK_CHARS = 1 << 19  # text per worker task: large enough to amortise IPC, small enough to balance load
_BYTES_PER_WORKER = 16 << 20  # auto worker count: one per this many input bytes, at most one per core
_GZIP_RATIO = 4  # rough text/compressed ratio, only to size the tokenizer-training sample
Reader = ingest.SourceReader | hf_source.HFReader


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Everything that changes the prepared output (and so its fingerprint)."""

    format: str = "auto"  # auto | text | jsonl
    separator: str = "auto"  # auto | blank | line | file | <marker>
    text_field: str = "text"  # JSONL objects: field holding the text ("a.b" for nested)
    val_fraction: float = 0.01  # share of documents in validation (ignored with validation_inputs)
    seed: int = 0  # split and tokenizer-sample seed
    shard_tokens: int = 1 << 30
    dtype: str = "auto"  # auto | uint8 | uint16 | uint32
    add_bos: bool = False  # BOS before every document (v2 style); EOS always follows it
    tokenizer_sample_mb: float = 100.0  # text sampled to train a sentencepiece model
    include: tuple[str, ...] = ingest.DEFAULT_INCLUDE  # file patterns taken from input folders


@dataclasses.dataclass
class PrepareResult:
    path: str
    manifest: dict[str, Any]
    skipped: bool  # True when the output already held this preparation
    seconds: float
    text_bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(self.seconds, 1e-9)


def is_validation(text: str, seed: int, fraction: float) -> bool:
    """Seeded, content-keyed split: identical documents always land in the same split."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


@dataclasses.dataclass
class _ChunkEncoder:
    """Encodes a chunk of documents into per-split (tokens, doc_lengths). Pickled once into each worker."""

    tokenizer: tokenizers.Tokenizer
    dtype: np.dtype
    val_fraction: float
    seed: int
    add_bos: bool

    def __call__(self, role: str, texts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        groups: dict[str, list[str]] = {"train": [], "validation": []}
        for text in texts:
            if role == "split":
                groups["validation" if is_validation(text, self.seed, self.val_fraction) else "train"].append(text)
            else:
                groups[role].append(text)
        return {split: self._encode(docs) for split, docs in groups.items() if docs}

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tok = self.tokenizer
        flat: list[int] = []
        lengths_D = np.empty(len(texts), np.int64)
        for i, ids in enumerate(tok.encode_batch(texts)):
            if self.add_bos:
                flat.append(tok.bos_id)
            flat.extend(ids)
            flat.append(tok.eos_id)  # EOS after every document, as the reference does
            lengths_D[i] = len(ids) + 1 + int(self.add_bos)
        return np.array(flat, dtype=self.dtype), lengths_D


_worker_encoder: _ChunkEncoder | None = None


def _init_worker(encoder: _ChunkEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(role: str, texts: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    assert _worker_encoder is not None
    return _worker_encoder(role, texts)


def _encoded_chunks(
    encoder: _ChunkEncoder, chunks: Iterator[tuple[str, list[str], int]], num_workers: int
) -> Iterator[tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]]:
    """Encoded chunks in input order. At most 2 tasks per worker are in flight, bounding memory."""
    if num_workers <= 1:
        for role, texts, nbytes in chunks:
            yield encoder(role, texts), nbytes
        return
    # spawn, not fork: sentencepiece/tqdm threads may exist in this process.
    with multiprocessing.get_context("spawn").Pool(num_workers, _init_worker, (encoder,)) as pool:
        pending: collections.deque = collections.deque()
        for role, texts, nbytes in chunks:
            pending.append((pool.apply_async(_encode_in_worker, (role, texts)), nbytes))
            if len(pending) >= 2 * num_workers:
                result, n = pending.popleft()
                yield result.get(), n
        while pending:
            result, n = pending.popleft()
            yield result.get(), n


def _consumed(reader: Reader) -> int:
    """Progress units of a reader read to its end: file bytes, or text bytes for hf inputs."""
    return reader.position() if isinstance(reader, hf_source.HFReader) else ingest.input_size(reader.path)


def _chunks(readers: list[tuple[Reader, str]]) -> Iterator[tuple[str, list[str], int]]:
    """(role, texts, progress units consumed) for each chunk; role is train, validation or split."""
    for reader, role in readers:
        texts: list[str] = []
        chars = done = 0
        for doc in reader.documents():
            texts.append(doc)
            chars += len(doc)
            if chars >= _CHUNK_CHARS:
                position = reader.position()
                yield role, texts, position - done
                texts, chars, done = [], 0, position
        yield role, texts, _consumed(reader) - done


def _text_size(reader: Reader, size: int | None) -> int | None:
    if size is None or isinstance(reader, hf_source.HFReader):
        return size
    return size * (_GZIP_RATIO if reader.path.endswith(".gz") else 1)


def _sample_for_tokenizer(
    readers: list[tuple[Reader, str]], sizes: list[int | None], options: PrepareOptions, bar: Any
) -> Iterator[str]:
    """A seeded sample of about tokenizer_sample_mb of training documents (validation ones are left out).
    When an input's size is unknown (a streamed hub dataset), the sample is the first tokenizer_sample_mb
    of training text, so the pass stops there instead of streaming the whole corpus."""
    train = [(r, role, _text_size(r, n)) for (r, role), n in zip(readers, sizes) if role != "validation"]
    known = None not in [n for _, _, n in train]
    total = sum(n or 0 for _, _, n in train)
    keep = min(1.0, options.tokenizer_sample_mb * 1e6 / max(total, 1)) if known else 1.0
    budget = options.tokenizer_sample_mb * 1e6
    taken = 0
    rng = random.Random(options.seed)
    for reader, role, _ in train:
        for doc in reader.documents():
            if role == "split" and is_validation(doc, options.seed, options.val_fraction):
                continue
            if keep >= 1.0 or rng.random() < keep:
                yield doc
                taken += len(doc)
                if not known and taken >= budget:
                    bar.update(reader.position())
                    return
        bar.update(_consumed(reader))


def _tqdm(enabled: bool, total: int | None, desc: str) -> Any:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, dynamic_ncols=True)


def _identity(tokenizer_id: str, options: PrepareOptions, train: list[dict], validation: list[dict]) -> dict[str, Any]:
    """What the fingerprint covers: content hashes (not paths), options and the tokenizer."""
    settings = dataclasses.asdict(options)
    if not tokenizer_id.startswith("train:"):
        del settings["tokenizer_sample_mb"]  # only matters when a tokenizer is trained
    return {
        "format": store.FORMAT_VERSION,
        "tokenizer": tokenizer_id,
        "options": settings,
        "inputs": [s["sha256"] for s in train],
        "validation_inputs": [s["sha256"] for s in validation],
    }


def _fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _existing(output: str, fingerprint: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The output's manifest if it already holds this preparation; raises if it holds anything else."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise DataError(f"{output}: output exists and is not a folder")
    if not os.path.isdir(output):
        return None
    if not os.path.exists(os.path.join(output, store.MANIFEST_FILE)):
        if os.listdir(output):
            raise DataError(f"{output}: output folder is not empty and holds no manifest; refusing to write into it")
        return None
    manifest = store.read_manifest(output)
    if manifest.get("fingerprint") == fingerprint:
        store.check_files(output, manifest)
        return manifest
    old = manifest.get("identity", {})
    differs = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if "options" in differs:
        was, now = old.get("options") or {}, identity["options"]
        changed = sorted(k for k in set(was) | set(now) if k in was and k in now and was[k] != now[k])
        if changed:
            differs[differs.index("options")] = f"options ({', '.join(changed)})"
        else:
            differs.remove("options")  # only an option that applies to one side (tokenizer_sample_mb)
    raise DataError(
        f"{output}: holds a different prepared dataset (differs in {', '.join(differs) or 'fingerprint'}); "
        "refusing to overwrite it: choose another --out or delete it"
    )


def _outside(output: str, files: list[str]) -> list[str]:
    """Input files minus those inside the output folder (an output under an input folder must not read its own
    manifest back as input on a re-run); ``hf:`` and gs:// inputs are kept (the output is a local folder)."""
    out = os.path.abspath(output) + os.sep
    kept = [f for f in files if hf_source.is_spec(f) or storage.is_remote(f) or not os.path.abspath(f).startswith(out)]
    if not kept:
        raise DataError(f"{output}: every input file lies inside the output folder")
    return kept


def _remove_stale_temporaries(parent: str, name: str) -> None:
    """Delete temporary folders left by killed runs (their process is gone); live runs' are kept."""
    prefix = f".{name}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        try:
            os.kill(int(entry[len(prefix):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def prepare(
    inputs: Sequence[str],
    output: str,
    tokenizer: str = "sp:8192",
    options: PrepareOptions = PrepareOptions(),
    *,
    validation_inputs: Sequence[str] = (),
    num_workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> PrepareResult:
    """Prepare ``inputs`` into the folder ``output``; see the module docstring. Raises DataError on bad input."""
    start = time.perf_counter()
    if not 0 <= options.val_fraction < 1:
        raise DataError(f"val_fraction {options.val_fraction}: must be in [0, 1)")
    if not options.tokenizer_sample_mb > 0:
        raise DataError(f"tokenizer_sample_mb {options.tokenizer_sample_mb}: must be > 0")
    output = os.path.normpath(output)
    train_spec = tokenizers.parse_train_spec(tokenizer)
    tok: tokenizers.Tokenizer | None = None
    if train_spec is None:
        tok = tokenizers.load_tokenizer(tokenizer)
        tokenizer_id = tok.hash
    else:
        tokenizer_id = f"train:sp-{train_spec[0]}:{train_spec[1]}"
    train_files = _outside(output, ingest.expand_sources(inputs, options.include))
    val_files = _outside(output, ingest.expand_sources(validation_inputs, options.include)) if validation_inputs else []
    # hf: inputs are opened now (config, split, field and first row checked); files are sniffed below.
    opened = {p: hf_source.HFReader(p, options.text_field) for p in train_files + val_files if hf_source.is_spec(p)}
    sources = [
        {"path": p, "role": role, "sha256": opened[p].identity(), "bytes": opened[p].size_estimate()} if p in opened
        else {"path": p, "role": role, "sha256": store.sha256_file(p), "bytes": ingest.input_size(p)}
        for files, role in ((train_files, "split" if not val_files else "train"), (val_files, "validation"))
        for p in files
    ]
    train_sources = [s for s in sources if s["role"] != "validation"]
    val_sources = [s for s in sources if s["role"] == "validation"]

    # A JSON round trip makes it compare equal to the copy read back from a manifest (tuples → lists).
    identity = json.loads(json.dumps(_identity(tokenizer_id, options, train_sources, val_sources)))
    fingerprint = _fingerprint(identity)
    manifest = _existing(output, fingerprint, identity)
    if manifest is not None:
        log(f"{output}: already prepared from these inputs (fingerprint {fingerprint[:12]}); nothing to do")
        return PrepareResult(output, manifest, True, time.perf_counter() - start, 0)

    # Sniff every file now, so a bad file fails in seconds rather than after an hour of tokenizing.
    readers: list[tuple[Reader, str]] = [
        (opened.get(s["path"]) or ingest.SourceReader(s["path"], options.format, options.separator,
                                                      options.text_field), s["role"])
        for s in sources
    ]
    sizes = [s["bytes"] for s in sources]
    total_bytes = None if None in sizes else sum(sizes)   # None: a streamed input of unknown size
    if train_spec is not None:
        model_type, vocab_size = train_spec
        log(f"training sentencepiece {model_type} ({vocab_size} pieces) on a sample of ≤{options.tokenizer_sample_mb} MB")
        train_sizes = [s["bytes"] for s in train_sources]
        with _tqdm(progress, None if None in train_sizes else sum(train_sizes), "sample") as bar:
            samples = _sample_for_tokenizer(readers, sizes, options, bar)
            tok = tokenizers.train_sentencepiece(samples, vocab_size, model_type)
    assert tok is not None
    dtype = store.token_dtype(tok.vocab_size, options.dtype)
    # Auto: a worker per core, but none for small inputs, where spawning (seconds) costs more than it saves.
    cores = os.cpu_count() or 1
    auto_workers = cores if total_bytes is None else min(cores, total_bytes // _BYTES_PER_WORKER)
    workers = max(1, num_workers if num_workers is not None else auto_workers)
    encoder = _ChunkEncoder(tok, dtype, 0.0 if val_files else options.val_fraction, options.seed, options.add_bos)

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(parent, os.path.basename(output))
    tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        writers = {split: store.SplitWriter(tmp, split, dtype, options.shard_tokens) for split in store.SPLITS}
        size = "an unknown size" if total_bytes is None else f"{total_bytes / 1e6:.1f} MB"
        log(f"tokenizing {size} in {len(sources)} input(s) with {workers} worker(s)")
        tokenize_start = time.perf_counter()
        docs = 0
        with _tqdm(progress, total_bytes, "tokenize") as bar:
            for encoded, nbytes in _encoded_chunks(encoder, _chunks(readers), workers):
                for split, (tokens, lengths) in encoded.items():
                    writers[split].add(tokens, lengths)
                    docs += len(lengths)
                rate = docs / max(time.perf_counter() - tokenize_start, 1e-9)
                bar.set_postfix_str(f"{docs:,} docs, {rate:,.0f} docs/s", refresh=False)
                bar.update(nbytes)
        tokenize_seconds = time.perf_counter() - tokenize_start
        splits = {split: info for split, w in writers.items() if (info := w.close()) is not None}
        if "train" not in splits:
            names = ", ".join(s["path"] for s in train_sources)[:300]
            raise DataError(f"{names}: empty corpus (no training documents; every file is empty or blank)")
        if isinstance(tok, (tokenizers.SentencePieceTokenizer, tokenizers.HFTokenizer)):   # kept beside the data
            tok.save(os.path.join(tmp, tok.describe()["file"]))
        text_bytes = sum(r.text_bytes for r, _ in readers)
        seconds = time.perf_counter() - start
        manifest = {
            "format": store.FORMAT_VERSION,
            "fingerprint": fingerprint,
            "identity": identity,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": {**tok.describe(), "spec": tokenizer},
            "dtype": dtype.name,
            "add_bos": options.add_bos,
            "splits": splits,
            "sources": [
                {**s, "format": r.format, "separator": r.separator if r.format == "text" else None,
                 "num_docs": r.num_docs, "text_bytes": r.text_bytes, "replaced_bytes": r.replaced_bytes,
                 **(r.manifest_fields() if isinstance(r, hf_source.HFReader) else {})}
                for s, (r, _) in zip(sources, readers)
            ],
            "stats": {"text_bytes": text_bytes, "seconds": round(seconds, 3),
                      "tokenize_seconds": round(tokenize_seconds, 3), "workers": workers},
        }
        for s in manifest["sources"]:
            if s["replaced_bytes"]:
                log(f"{s['path']}: {s['replaced_bytes']} undecodable bytes replaced by U+FFFD")
        tokenizers.atomic_write(os.path.join(tmp, store.MANIFEST_FILE), json.dumps(manifest, indent=1).encode())
        if os.path.isdir(output):
            os.rmdir(output)  # _existing() allowed only an empty folder here
        os.rename(tmp, output)  # the commit point: before it, nothing exists at `output`
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(output, manifest, False, seconds, text_bytes)
