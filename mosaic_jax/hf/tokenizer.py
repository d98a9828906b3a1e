"""A run's tokenizer as a Hugging Face fast tokenizer (`tokenizer.json` that `PreTrainedTokenizerFast` loads).

    hf_tok = to_tokenizers(tok)                  # a `tokenizers.Tokenizer` encoding exactly as `tok.encode`
    save_hf_tokenizer(tok, out_dir)              # tokenizer.json + tokenizer_config.json (+ the .model file)

* sentencepiece: converted from the model proto by transformers' own converter (it follows the model's
  normaliser settings, byte fallback and score-ranked BPE merges), so ids equal sentencepiece's (tested);
* byte: a merge-free byte-level BPE whose byte b has id b + 4, as ByteTokenizer;
* hf: the file itself.
GPT-2 (tiktoken) runs are not converted: transformers users load the stock `gpt2` tokenizer (same ids).
One difference remains, as for every Hugging Face tokenizer with special tokens: a literal `"</s>"` (or `"<s>"`,
`"<pad>"`) in the text is read as the special token, where sentencepiece and the byte tokenizer spell it out.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from mosaic_jax.data import tokenizers as mt


class TokenizerExportError(ValueError):
    """The run's tokenizer has no Hugging Face equivalent here (one-line message)."""


def _special_names(tok: mt.Tokenizer) -> dict[str, str]:
    """Names of PAD/EOS/BOS (and UNK) for the sentencepiece and byte tokenizers (fixed ids 0..3)."""
    return {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


def _from_sentencepiece(tok: mt.SentencePieceTokenizer) -> Any:
    from tokenizers import AddedToken   # optional: extra [hf], as below
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tok.model_proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    bpe = proto.trainer_spec.model_type == 2            # 1 unigram, 2 bpe (sentencepiece_model.proto)
    if proto.trainer_spec.model_type not in (1, 2):
        raise TokenizerExportError(f"{tok.source}: sentencepiece model type {proto.trainer_spec.model_type} "
                                   "(only BPE and unigram convert)")
    vocab = {p: i for i, (p, _) in enumerate(pieces)} if bpe else pieces
    hf = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, merges=None)
    if hf is None:
        raise TokenizerExportError(f"{tok.source}: transformers could not convert this sentencepiece model")
    # Control pieces (<pad>, </s>, <s>) are special: never produced from text, dropped by decode(skip_special...).
    hf.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                           for p in proto.pieces if p.type == 3])
    return hf


def _from_bytes() -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers   # optional: extra [hf]
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()                     # the 256 printable stand-ins of bytes 0..255, sorted
    byte_char = _bytes_to_unicode()
    assert sorted(byte_char.values()) == sorted(alphabet)
    vocab = {"<pad>": mt.PAD_ID, "</s>": mt.EOS_ID, "<s>": mt.BOS_ID, "<unk>": mt.UNK_ID}
    vocab.update({byte_char[b]: b + 4 for b in range(256)})
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "</s>", "<s>", "<unk>")])
    return hf


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (the one `ByteLevel` uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def to_tokenizers(tok: mt.Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` that encodes text to the same ids as `tok`."""
    if isinstance(tok, mt.SentencePieceTokenizer):
        return _from_sentencepiece(tok)
    if isinstance(tok, mt.ByteTokenizer):
        return _from_bytes()
    if isinstance(tok, mt.HFTokenizer):
        return tok._tokenizer()
    raise TokenizerExportError(f"tokenizer kind {tok.kind!r} has no tokenizer.json export (for 'gpt2' runs load "
                               "the stock GPT-2 tokenizer: AutoTokenizer.from_pretrained('gpt2'))")


def save_hf_tokenizer(tok: mt.Tokenizer, out_dir: str | pathlib.Path) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (and `tokenizer.model` for a
    sentencepiece run) into `out_dir`; returns the file names written."""
    from transformers import PreTrainedTokenizerFast   # optional: extra [hf]

    out = pathlib.Path(out_dir)
    if isinstance(tok, mt.HFTokenizer):
        names = {"eos_token": tok.eos_token, "bos_token": tok.eos_token, "pad_token": tok.eos_token}
    else:
        names = _special_names(tok)
    fast = PreTrainedTokenizerFast(tokenizer_object=to_tokenizers(tok), clean_up_tokenization_spaces=False,
                                   model_max_length=int(1e30), **names)
    written = [pathlib.Path(p).name for p in fast.save_pretrained(str(out))]
    if isinstance(tok, mt.SentencePieceTokenizer):
        tok.save(str(out / mt.TOKENIZER_FILE))
        written.append(mt.TOKENIZER_FILE)
    # the run's own tokenizer description, so this folder is also a `--tokenizer` for mosaic_jax tools
    (out / "mosaic_tokenizer.json").write_text(json.dumps(tok.describe(), indent=1) + "\n")
    return sorted(set(written + ["mosaic_tokenizer.json"]))
