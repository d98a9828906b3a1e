"""Tokenizers: byte-level, sentencepiece (train or load), GPT-2 BPE through tiktoken and Hugging Face
``tokenizer.json`` files through ``tokenizers`` (spec ``hf:PATH``; both optional dependencies).

All share one small interface (``encode``, ``decode``, ``vocab_size``, ``eos_id``, ``bos_id``, ``pad_id``,
``hash``). ``hash`` is a sha256 of what defines the mapping text → ids, so prepared data and checkpoints can
refuse a mismatched tokenizer. Objects pickle cheaply and build their native processor lazily, because grain
and the prepare pool spawn worker processes (a SentencePieceProcessor must be created inside the worker).
"""
from __future__ import annotations

import abc
import hashlib
import io
import json
import os
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

from mosaic_jax.data.errors import DataError

# Special ids shared by the byte and sentencepiece tokenizers (sentencepiece is trained with these).
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
_BYTE_OFFSET = 4  # byte b ↦ id b + 4
TOKENIZER_FILE = "tokenizer.model"  # name of the sentencepiece model inside a prepared-data folder
MANIFEST_FILE = "manifest.json"


class Tokenizer(abc.ABC):
    """Text ↔ ids. Subclasses set ``kind``, ``vocab_size``, ``eos_id``, ``bos_id``, ``pad_id``, ``hash``."""

    kind: str
    vocab_size: int
    eos_id: int
    bos_id: int
    pad_id: int
    hash: str

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no BOS/EOS added)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids are dropped."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this tokenizer."""
        return {
            "kind": self.kind,
            "hash": self.hash,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, hash={self.hash[:12]})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the four special ids: vocabulary 260. For tiny tests."""

    kind = "byte"
    vocab_size = 256 + _BYTE_OFFSET
    eos_id, bos_id, pad_id = EOS_ID, BOS_ID, PAD_ID
    hash = hashlib.sha256(b"mosaic_jax.byte/1 pad=0 eos=1 bos=2 unk=3 offset=4").hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + _BYTE_OFFSET

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - _BYTE_OFFSET for i in map(int, ids) if _BYTE_OFFSET <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model held as its serialized bytes; the processor is built on first use."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<memory>") -> None:
        self.model_proto = bytes(model_proto)
        self.source = source
        self.hash = hashlib.sha256(self.model_proto).hexdigest()
        self._sp: Any = None
        sp = self._processor()  # validate now, in the caller's process, with a clear error
        self.vocab_size = int(sp.get_piece_size())
        # Models trained elsewhere may lack pad/bos/eos (id -1); fall back so batches can still be padded.
        self.eos_id = int(sp.eos_id())
        self.bos_id = int(sp.bos_id())
        self.pad_id = int(sp.pad_id()) if sp.pad_id() >= 0 else max(self.eos_id, 0)
        if self.eos_id < 0:
            raise DataError(f"{source}: sentencepiece model has no EOS id (train it with eos_id set)")

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        try:
            with open(path, "rb") as f:
                return cls(f.read(), source=path)
        except OSError as e:
            raise DataError(f"{path}: cannot read sentencepiece model ({e.strerror})") from None

    def _processor(self) -> Any:
        if self._sp is None:
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(self.model_proto)
            except (RuntimeError, OSError) as e:
                raise DataError(f"{self.source}: not a sentencepiece model ({str(e).strip()})") from None
            self._sp = sp
        return self._sp

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sp"] = None  # rebuilt lazily in the (spawned) process that unpickles us
        return state

    def encode(self, text: str) -> list[int]:
        return self._processor().encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor().encode(list(texts), out_type=int, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor().decode([int(i) for i in ids])

    def save(self, path: str) -> None:
        atomic_write(path, self.model_proto)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": TOKENIZER_FILE}


# tiktoken fetches GPT-2's two files from these URLs and caches them under sha1(url) in its cache folder.
_GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
_GPT2_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def _tiktoken_cache_dir() -> str:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


class Gpt2Tokenizer(Tokenizer):
    """GPT-2 BPE (the reference's tokenizer) through tiktoken, never touching the network.

    The encoding files are looked up in ``files_dir`` (holding ``vocab.bpe`` and ``encoder.json``; spec
    ``gpt2:DIR`` or env ``MOSAIC_GPT2_DIR``), else in tiktoken's cache (``TIKTOKEN_CACHE_DIR``).
    EOS = BOS = PAD = 50256 (``<|endoftext|>``), as in the reference.
    """

    kind = "gpt2"
    vocab_size = 50257
    eos_id = bos_id = pad_id = 50256
    hash = hashlib.sha256(("tiktoken-gpt2:" + ":".join(sorted(_GPT2_SHA256.values()))).encode()).hexdigest()

    def __init__(self, files_dir: str | None = None) -> None:
        self.files_dir = files_dir or os.environ.get("MOSAIC_GPT2_DIR") or None
        self._enc: Any = None
        self._encoding()  # fail now, with a clear message, if tiktoken or the files are missing

    def _encoding(self) -> Any:
        if self._enc is not None:
            return self._enc
        try:
            import tiktoken
            import tiktoken.load
            from tiktoken_ext import openai_public
        except ImportError:
            raise DataError(
                "tokenizer 'gpt2' needs the optional package tiktoken, which is not installed: "
                "pip install 'mosaic_jax[tiktoken]' (or pip install tiktoken); or use --tokenizer=sp:8192 / byte"
            ) from None
        if self.files_dir:
            paths = {name: os.path.join(self.files_dir, name) for name in _GPT2_URLS}
            where = self.files_dir
        else:
            where = _tiktoken_cache_dir()
            paths = {n: os.path.join(where, hashlib.sha1(u.encode()).hexdigest()) for n, u in _GPT2_URLS.items()}
        missing = [f"{name} ({path})" for name, path in paths.items() if not os.path.isfile(path)]
        if missing:
            raise DataError(
                f"tokenizer 'gpt2': tiktoken's GPT-2 encoding is not available locally in {where}: missing "
                f"{', '.join(missing)}; put vocab.bpe and encoder.json in a folder and pass --tokenizer=gpt2:DIR "
                "(or MOSAIC_GPT2_DIR), or fill TIKTOKEN_CACHE_DIR on a machine with network"
            )
        try:
            if not self.files_dir:
                self._enc = tiktoken.get_encoding("gpt2")  # every file is cached: no download
                return self._enc
            # An empty cache dir stops tiktoken from copying our local files into its cache.
            saved = os.environ.get("TIKTOKEN_CACHE_DIR")
            os.environ["TIKTOKEN_CACHE_DIR"] = ""
            try:
                ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
                    vocab_bpe_file=paths["vocab.bpe"],
                    encoder_json_file=paths["encoder.json"],
                    vocab_bpe_hash=_GPT2_SHA256["vocab.bpe"],
                    encoder_json_hash=_GPT2_SHA256["encoder.json"],
                )
            finally:
                if saved is None:
                    del os.environ["TIKTOKEN_CACHE_DIR"]
                else:
                    os.environ["TIKTOKEN_CACHE_DIR"] = saved
        except (ValueError, OSError) as e:
            raise DataError(f"tokenizer 'gpt2': cannot load the encoding from {where} ({e})") from None
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=openai_public.r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.eos_id},
            explicit_n_vocab=self.vocab_size,
        )
        return self._enc

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_enc": None}

    def encode(self, text: str) -> list[int]:
        # encode_ordinary treats a literal "<|endoftext|>" in the text as text, like the reference.
        return self._encoding().encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encoding().encode_ordinary_batch(list(texts), num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding().decode([int(i) for i in ids if int(i) != self.eos_id])


HF_TOKENIZER_FILE = "tokenizer.json"   # name of a Hugging Face tokenizer inside a prepared-data folder
# Where no tokenizer_config.json names the EOS token, the first of these in the vocabulary is EOS.
_HF_EOS_GUESSES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library (spec ``hf:FILE`` or ``hf:FOLDER``).

    EOS comes from the folder's ``tokenizer_config.json`` / ``special_tokens_map.json`` (``eos_token``) when
    present, else from well-known names. ``hash`` covers the file's bytes and the EOS id (EOS separates
    documents in prepared data). Special tokens are never produced by ``encode`` (no BOS/EOS added)."""

    kind = "hf"

    def __init__(self, json_bytes: bytes, eos_token: str | None = None, source: str = "<memory>") -> None:
        self.json_bytes, self.source, self.eos_token = bytes(json_bytes), source, eos_token
        self._tok: Any = None
        tok = self._tokenizer()
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        names = [eos_token] if eos_token else [n for n in _HF_EOS_GUESSES if tok.token_to_id(n) is not None][:1]
        eos = tok.token_to_id(names[0]) if names else None
        if eos is None and eos_token:
            raise DataError(f"{source}: eos_token {eos_token!r} (from tokenizer_config.json) is not in the vocabulary")
        if eos is None:
            raise DataError(f"{source}: cannot tell the EOS token (no eos_token in tokenizer_config.json and none of "
                            f"{', '.join(_HF_EOS_GUESSES)} in the vocabulary)")
        self.eos_token = names[0]
        self.eos_id = self.bos_id = self.pad_id = int(eos)
        self.hash = hashlib.sha256(b"hf-tokenizers/1 eos=%d\n" % self.eos_id + self.json_bytes).hexdigest()

    @classmethod
    def from_path(cls, path: str) -> "HFTokenizer":
        """``path``: a tokenizer.json file, or a folder holding one (and maybe tokenizer_config.json)."""
        folder, file = (path, os.path.join(path, HF_TOKENIZER_FILE)) if os.path.isdir(path) else \
            (os.path.dirname(path), path)
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"{file}: cannot read Hugging Face tokenizer ({e.strerror})") from None
        eos = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    value = json.load(f).get("eos_token")
            except (OSError, ValueError, AttributeError):
                continue
            eos = value.get("content") if isinstance(value, dict) else value
            if eos:
                break
        return cls(data, eos, source=file)

    def _tokenizer(self) -> Any:
        if self._tok is None:
            try:
                import tokenizers as hf_tokenizers
            except ImportError:
                raise DataError(f"tokenizer hf:{self.source} needs the optional package tokenizers "
                                "(pip install 'mosaic_jax[hf]' or pip install tokenizers)") from None
            try:
                self._tok = hf_tokenizers.Tokenizer.from_str(self.json_bytes.decode("utf-8"))
            except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
                raise DataError(f"{self.source}: not a Hugging Face tokenizer.json ({str(e).strip()[:200]})") from None
        return self._tok

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def encode(self, text: str) -> list[int]:
        return self._tokenizer().encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer().encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str) -> None:
        atomic_write(path, self.json_bytes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": HF_TOKENIZER_FILE, "eos_token": self.eos_token}


def parse_train_spec(spec: str) -> tuple[str, int] | None:
    """``sp:8192`` → ("bpe", 8192); ``sp-unigram:8192`` → ("unigram", 8192); anything else → None."""
    for prefix, model_type in (("sp:", "bpe"), ("sp-bpe:", "bpe"), ("sp-unigram:", "unigram")):
        if spec.startswith(prefix):
            try:
                return model_type, int(spec[len(prefix):])
            except ValueError:
                raise DataError(f"tokenizer spec {spec!r}: the vocabulary size must be an integer") from None
    return None


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    *,
    max_sentences: int = 5_000_000,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
) -> SentencePieceTokenizer:
    """Train a sentencepiece model on ``texts`` (documents; each line is one training sentence).

    Byte fallback makes every string encodable; the identity normalisation and kept whitespace make
    decode(encode(text)) == text. Special ids are fixed: pad 0, eos 1, bos 2, unk 3.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"sentencepiece model type {model_type!r}: choose bpe or unigram")
    if vocab_size <= 256 + _BYTE_OFFSET:
        raise DataError(f"sentencepiece vocabulary {vocab_size} is too small: byte fallback alone takes 260 ids")

    def sentences() -> Iterable[str]:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences()),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            character_coverage=0.9995,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size,
            max_sentence_length=1 << 16,
            hard_vocab_limit=model_type == "bpe",
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"sentencepiece training failed ({str(e).strip()})") from None
    return SentencePieceTokenizer(writer.getvalue(), source=f"trained {model_type}:{vocab_size}")


def load_tokenizer(spec: str) -> Tokenizer:
    """``byte``, ``gpt2`` (or ``gpt2:DIR``), ``hf:PATH`` (a tokenizer.json or a folder holding one), a
    sentencepiece ``.model`` path, or a prepared-data folder."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2" or spec.startswith("gpt2:"):
        return Gpt2Tokenizer(spec[len("gpt2:"):] or None)
    if spec.startswith("hf:"):
        return HFTokenizer.from_path(spec[len("hf:"):])
    if parse_train_spec(spec) is not None:
        raise DataError(f"tokenizer spec {spec!r} trains a new model; only prepare_data does that (load the prepared folder instead)")
    if os.path.isdir(spec):
        return _load_from_prepared(spec)
    if os.path.isfile(spec):
        return SentencePieceTokenizer.from_file(spec)
    if spec.endswith(".model") or os.sep in spec or spec.startswith("."):
        raise DataError(f"{spec}: file not found (a sentencepiece .model file or a prepared-data folder)")
    raise DataError(f"{spec}: unknown tokenizer (use byte, gpt2, hf:PATH, a sentencepiece .model file or a prepared-data folder)")


def _load_from_prepared(folder: str) -> Tokenizer:
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            info = json.load(f)["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{manifest_path}: missing or invalid manifest; cannot tell which tokenizer {folder} uses") from None
    kind = info.get("kind")
    if kind == "sentencepiece":
        tok: Tokenizer = SentencePieceTokenizer.from_file(os.path.join(folder, info.get("file", TOKENIZER_FILE)))
    elif kind == "byte":
        tok = ByteTokenizer()
    elif kind == "gpt2":
        tok = Gpt2Tokenizer()
    elif kind == "hf":
        path = os.path.join(folder, info.get("file", HF_TOKENIZER_FILE))
        try:
            with open(path, "rb") as f:
                tok = HFTokenizer(f.read(), info.get("eos_token"), source=path)
        except OSError as e:
            raise DataError(f"{path}: cannot read Hugging Face tokenizer ({e.strerror})") from None
    else:
        raise DataError(f"{manifest_path}: field tokenizer.kind {kind!r} is not a known tokenizer")
    if tok.hash != info.get("hash"):
        raise DataError(f"{manifest_path}: tokenizer hash {tok.hash[:12]} does not match field tokenizer.hash {str(info.get('hash'))[:12]}")
    return tok


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
