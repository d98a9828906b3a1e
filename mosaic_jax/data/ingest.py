"""Ingestion: text files, folders, globs, JSONL and gzip → a stream of documents (plain ``str``).

Formats
  * text  : documents split by a separator (``blank`` line, one per ``line``, whole ``file``, or a marker
            such as ``<|endoftext|>``); ``auto`` picks one per file from its first 64 KiB.
  * jsonl : one JSON value per line, either a string (the BabiStories format) or an object with a text field.
Either may be gzip-compressed (detected by magic bytes, not by name).

Inputs may be ``gs://bucket/prefix`` URLs (a folder is listed for ``include`` patterns, a glob matches object names,
an object is taken as named). Each object is streamed through etils.epath (gcsfs) rather than staged in a local
folder: a corpus then never needs its size in local disk, and the manifest records the URL, not a temporary path.
The price is that an object is read once per pass (sha256, tokenizer sample, tokenizing), as a local file is.

Undecodable UTF-8 bytes are replaced by U+FFFD and counted; a file that is mostly binary is refused.
Every error is a :class:`DataError` with a one-line message naming the file (and line or field).
"""
from __future__ import annotations

import codecs
import dataclasses
import fnmatch
import glob
import gzip
import io
import json
import os
import re
import zlib
from typing import BinaryIO, Iterator, Sequence

from mosaic_jax.data import hf_source
from mosaic_jax.data.errors import DataError
from mosaic_jax.io import storage

# Files taken when a folder is given as input (explicitly named files are always taken).
DEFAULT_INCLUDE: tuple[str, ...] = tuple(
    pat + gz for pat in ("*.txt", "*.text", "*.jsonl", "*.json", "*.ndjson") for gz in ("", ".gz")
)
KNOWN_MARKERS: tuple[str, ...] = ("<|endoftext|>",)
SEPARATOR_KEYWORDS: tuple[str, ...] = ("auto", "blank", "line", "file")
FORMATS: tuple[str, ...] = ("auto", "text", "jsonl")
SNIFF_BYTES = 1 << 16
# A file whose sniffed bytes are more than this fraction control/undecodable is "not text".
MAX_BINARY_FRACTION = 0.3
# Hard-wrapped prose keeps lines under ~80 characters; when a quarter of the lines are longer than this,
# lines are whole paragraphs.
_UNWRAPPED_LINE_CHARS = 100
_GZIP_MAGIC = b"\x1f\x8b"
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t\r\f\v]*\n)+")
_SURROGATES = re.compile("[\ud800-\udfff]")
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v")

# Undecodable bytes are replaced and counted through one codec error handler. Ingestion runs in a
# single thread, so a module-level counter is enough (readers take the difference around their reads).
_replaced_bytes = [0]


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    _replaced_bytes[0] += exc.end - exc.start
    return "\ufffd", exc.end


codecs.register_error("mosaic_jax_count_replace", _count_and_replace)
_ERRORS = "mosaic_jax_count_replace"


def expand_inputs(patterns: Sequence[str], include: Sequence[str] = DEFAULT_INCLUDE) -> list[str]:
    """Files named by ``patterns`` (files, folders walked recursively, or globs; local or gs://), in a stable order."""
    files: list[str] = []
    for pattern in patterns:
        if not pattern:
            continue
        if storage.is_remote(pattern):
            files.extend(_expand_remote(pattern, include))
            continue
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise DataError(f"{pattern}: input pattern matched no files")
        elif os.path.exists(pattern):
            matches = [pattern]
        else:
            raise DataError(f"{pattern}: input not found")
        for match in matches:
            if os.path.isdir(match) and hf_source.is_saved_dataset(match):
                raise DataError(f"{match}: a datasets save_to_disk folder; pass it as --input=hf:{match}")
            if os.path.isdir(match):
                files.extend(_walk(match, include))
            elif os.path.isfile(match):
                files.append(match)
    unique = list(dict.fromkeys(files))  # keep order, drop repeats
    if not unique:
        raise DataError(f"{','.join(patterns)}: empty corpus (no input files; folders take {','.join(include)})")
    return unique


def _expand_remote(url: str, include: Sequence[str]) -> list[str]:
    """gs:// objects named by `url`: the object itself, every object under the folder `url` whose name matches
    `include` (in os.walk order, so a folder gives the same input order, hence fingerprint, as its local copy), or
    the objects a glob matches (fsspec glob semantics: `*` stays within one folder, `**` crosses folders; folders
    it matches are not walked)."""
    url = url.rstrip("/")
    try:
        if any(ch in url for ch in "*?["):
            import fsspec   # optional: extra [gcs] (gs:// globs)
            matched = fsspec.filesystem("gs").glob(url[len("gs://"):], detail=True)
            found = sorted("gs://" + f for f, info in matched.items() if info.get("type") != "directory")
            if not found:
                raise DataError(f"{url}: input pattern matched no objects")
            return found
        if storage.path(url).is_file():
            return [url]
        listed = storage.list_files(url)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - no bucket, no permission, no network: one line naming the URL
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{url}: input not found (no such bucket)") from None
        raise DataError(f"{url}: cannot list input ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not listed:
        raise DataError(f"{url}: input not found (no object or folder of that name)")
    taken = [rel for rel in listed if not any(part.startswith(".") for part in rel.split("/"))
             and any(fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pat) for pat in include)]
    # os.walk order: a folder's files (sorted) before its subfolders (sorted), recursively
    taken.sort(key=lambda rel: [(1, d) for d in rel.split("/")[:-1]] + [(0, rel.rsplit("/", 1)[-1])])
    return [f"{url}/{rel}" for rel in taken]


def input_size(path: str) -> int:
    """Bytes of an input file or gs:// object."""
    return storage.path(path).stat().length if storage.is_remote(path) else os.path.getsize(path)


def expand_sources(patterns: Sequence[str], include: Sequence[str] = DEFAULT_INCLUDE) -> list[str]:
    """Input files and ``hf:`` specs in the order given; each run of file patterns expands as expand_inputs."""
    if not any(map(hf_source.is_spec, patterns)):
        return expand_inputs(patterns, include)
    found: list[str] = []
    run: list[str] = []
    for pattern in patterns:
        if hf_source.is_spec(pattern):
            if run:
                found.extend(expand_inputs(run, include))
                run = []
            found.append(pattern)
        else:
            run.append(pattern)
    if run:
        found.extend(expand_inputs(run, include))
    return list(dict.fromkeys(found))


def _walk(folder: str, include: Sequence[str]) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and any(fnmatch.fnmatch(name, pat) for pat in include):
                found.append(os.path.join(root, name))
    return found


def _open_raw(path: str) -> BinaryIO:
    if storage.is_remote(path):
        # gcsfs's readline reads a whole block (5 MB) per line; a BufferedReader makes line iteration cheap
        return io.BufferedReader(storage.path(path).open("rb"), 1 << 20)  # type: ignore[arg-type]
    return open(path, "rb")


def _open_binary(path: str) -> tuple[BinaryIO, BinaryIO]:
    """(stream of uncompressed bytes, the raw file underneath, whose position measures progress)."""
    raw = _open_raw(path)
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    raw.seek(0)
    return raw, raw


def _read_head(path: str, n: int) -> bytes:
    stream, raw = _open_binary(path)
    try:
        return stream.read(n)
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise DataError(f"{path}: corrupt gzip file ({e})") from None
    finally:
        stream.close()
        raw.close()


def check_text(path: str, head: bytes) -> str:
    """Decode the sniffed head; refuse a file that is mostly binary. Returns the decoded text."""
    before = _replaced_bytes[0]
    # An incremental decoder does not count a multi-byte character cut by the sniff window as bad.
    text = codecs.getincrementaldecoder("utf-8")(errors=_ERRORS).decode(head.removeprefix(codecs.BOM_UTF8), final=False)
    replaced = _replaced_bytes[0] - before
    _replaced_bytes[0] = before  # the streaming pass counts these bytes again
    controls = sum(1 for ch in text if ch < " " and ch not in _ALLOWED_CONTROLS)
    if head and (replaced + controls) / len(head) > MAX_BINARY_FRACTION:
        share = (replaced + controls) / len(head)
        raise DataError(f"{path}: not a text file ({share:.0%} of the first {len(head)} bytes are binary or undecodable)")
    return text


def detect_format(path: str, head_text: str) -> str:
    """``jsonl`` for *.jsonl/*.json/*.ndjson, or when the first lines all parse as JSON strings/objects
    (BabiStories ships ``traindataset.txt`` with one JSON string per line); else ``text``."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    lines = [ln.strip() for ln in head_text.split("\n")[:-1] if ln.strip()][:5]
    if not lines:
        return "text"
    for line in lines:
        if line[0] not in "\"{":
            return "text"
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            return "text"
        if not isinstance(value, (str, dict)):
            return "text"
    return "jsonl"


def detect_separator(head_text: str) -> str:
    """Pick the document separator of a text file from its head.

    * a known marker (``<|endoftext|>``) anywhere → that marker (TinyStoriesV2 format);
    * no blank lines → ``line`` (one document per line);
    * blank lines, and unwrapped (paragraph-long) lines that also follow each other directly → ``line``
      (TinyStories v1: paragraphs split by blank lines, stories by a single newline);
    * otherwise → ``blank`` (documents are blank-line separated blocks).
    """
    for marker in KNOWN_MARKERS:
        if marker in head_text:
            return marker
    lines = head_text.split("\n")
    if len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut by the sniff window
    blank = [not ln.strip() for ln in lines]
    if not any(blank):
        return "line"
    lengths = [len(ln) for ln, b in zip(lines, blank) if not b]
    adjacent = sum(1 for a, b in zip(blank, blank[1:]) if not a and not b)
    long_lines = sum(1 for n in lengths if n > _UNWRAPPED_LINE_CHARS)
    if adjacent and long_lines >= 0.25 * len(lengths):
        return "line"
    return "blank"


def _finish(lines: list[str]) -> str | None:
    """Join a document's lines; drop blank lines at its ends; None if nothing is left."""
    text = _LEADING_BLANK_LINES.sub("", "\n".join(lines)).rstrip()
    return text if text else None


def _split_text(lines: Iterator[str], separator: str) -> Iterator[str]:
    buf: list[str] = []
    if separator == "file":
        doc = _finish(list(lines))
        if doc:
            yield doc
        return
    if separator == "blank":
        for line in lines:
            if line.strip():
                buf.append(line)
            elif buf:
                doc = _finish(buf)
                buf = []
                if doc:
                    yield doc
    elif separator == "line":
        # A newline between two non-blank lines ends a document; blank lines are paragraph breaks inside it.
        previous_blank = True
        for line in lines:
            if not line.strip():
                if buf:
                    buf.append("")
                previous_blank = True
                continue
            if buf and not previous_blank:
                doc = _finish(buf)
                buf = []
                if doc:
                    yield doc
            buf.append(line)
            previous_blank = False
    else:  # a marker string, possibly inline
        for line in lines:
            if separator not in line:
                buf.append(line)
                continue
            parts = line.split(separator)
            buf.append(parts[0])
            for part in parts[1:]:
                doc = _finish(buf)
                if doc:
                    yield doc
                buf = [part]
    doc = _finish(buf)
    if doc:
        yield doc


@dataclasses.dataclass
class SourceReader:
    """Reads one file as documents. After iteration, ``num_docs``, ``text_bytes`` and ``replaced_bytes``
    describe what was read; ``format`` and ``separator`` are the resolved (non-auto) choices."""

    path: str
    format: str = "auto"
    separator: str = "auto"
    text_field: str = "text"
    num_docs: int = 0
    text_bytes: int = 0
    replaced_bytes: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"{self.path}: unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        if self.separator.startswith("marker:"):
            self.separator = self.separator[len("marker:"):]
        if not self.separator:
            raise DataError(f"{self.path}: empty document separator")
        head = _read_head(self.path, SNIFF_BYTES)
        head_text = check_text(self.path, head)
        if self.format == "auto":
            self.format = detect_format(self.path, head_text)
        if self.format == "text" and self.separator == "auto":
            self.separator = detect_separator(head_text)
        self._raw: BinaryIO | None = None

    def position(self) -> int:
        """Bytes of the file on disk consumed so far (compressed bytes for gzip): for progress bars."""
        try:
            return self._raw.tell() if self._raw is not None and not self._raw.closed else 0
        except (OSError, ValueError):
            return 0

    def documents(self) -> Iterator[str]:
        stream, self._raw = _open_binary(self.path)
        self.num_docs = self.text_bytes = 0  # a reader may be iterated more than once
        start_replaced = _replaced_bytes[0]
        try:
            docs = self._jsonl(stream) if self.format == "jsonl" else _split_text(self._lines(stream), self.separator)
            for doc in docs:
                self.num_docs += 1
                yield doc
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(f"{self.path}: corrupt gzip file ({e})") from None
        finally:
            self.replaced_bytes = _replaced_bytes[0] - start_replaced
            stream.close()
            self._raw.close()
        if self.text_bytes and self.replaced_bytes / self.text_bytes > MAX_BINARY_FRACTION:
            raise DataError(f"{self.path}: not a text file ({self.replaced_bytes} of {self.text_bytes} bytes undecodable)")

    def _lines(self, stream: BinaryIO) -> Iterator[str]:
        for lineno, raw_line in enumerate(stream):
            self.text_bytes += len(raw_line)
            if lineno == 0 and raw_line.startswith(codecs.BOM_UTF8):
                raw_line = raw_line[len(codecs.BOM_UTF8):]   # a byte-order mark is not text
            # UTF-8 never puts b"\n" inside a multi-byte character, so line-wise decoding is exact.
            yield raw_line.decode("utf-8", _ERRORS).rstrip("\r\n")

    def _jsonl(self, stream: BinaryIO) -> Iterator[str]:
        for lineno, line in enumerate(self._lines(stream), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if isinstance(value, dict):
                value = self._field(value, lineno)
            elif not isinstance(value, str):
                raise DataError(f"{self.path}:{lineno}: expected a JSON string or object, got {type(value).__name__}")
            if value.strip():
                yield _without_surrogates(value)

    def _field(self, obj: dict, lineno: int) -> str:
        value: object = obj
        for key in self.text_field.split("."):  # "a.b" reaches into nested objects
            if not isinstance(value, dict) or key not in value:
                keys = ", ".join(sorted(map(str, obj)))[:200]
                raise DataError(f"{self.path}:{lineno}: missing text field {self.text_field!r} (keys: {keys})")
            value = value[key]
        if not isinstance(value, str):
            raise DataError(
                f"{self.path}:{lineno}: field {self.text_field!r} is {type(value).__name__}, expected a string"
            )
        return value


def _without_surrogates(text: str) -> str:
    """JSON may escape lone surrogates (\\ud800) that UTF-8 cannot encode; each becomes one U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        _replaced_bytes[0] += len(_SURROGATES.findall(text))
        return _SURROGATES.sub("\ufffd", text)


def iter_documents(
    paths: Sequence[str], format: str = "auto", separator: str = "auto", text_field: str = "text"
) -> Iterator[str]:
    """All documents of ``paths`` in order (a convenience over :class:`SourceReader`)."""
    for path in paths:
        yield from SourceReader(path, format, separator, text_field).documents()
