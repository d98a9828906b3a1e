"""Byte-pair tokenizers from other ecosystems, both optional dependencies: GPT-2 BPE through tiktoken (spec
``gpt2``) and Hugging Face ``tokenizer.json`` files through ``tokenizers`` (spec ``hf:PATH``)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Iterable, Sequence

from mosaic_jax.data.errors import DataError
from mosaic_jax.data.tokenizer_base import Tokenizer, atomic_write

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
            import tiktoken   # optional: extra [tiktoken]
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
                import tokenizers as hf_tokenizers   # optional: extra [hf]
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
