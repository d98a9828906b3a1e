"""`--tokenizer=hf:PATH`: a Hugging Face tokenizer.json through `tokenizers`, prepared, hashed and stored like the
others (a BPE trained here with the `tokenizers` library on a TinyStories slice; no downloads)."""
import json
import pickle

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from mosaic_jax.training import checkpoint
from mosaic_jax.data import pipeline, store  # noqa: E402
from mosaic_jax.data.errors import DataError  # noqa: E402
from mosaic_jax.data.tokenizers import HFTokenizer, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def hf_folder(data_dir, tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    text = (data_dir / "tinystories" / "valid_v1_prefix.txt").read_text()[:100_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text.split("\n"), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("hf_tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder, text


def test_hf_tokenizer_encodes_like_tokenizers(hf_folder):
    folder, text = hf_folder
    tok = load_tokenizer(f"hf:{folder}")
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    sample = text[:3000]
    assert tok.kind == "hf" and tok.eos_id == ref.token_to_id("<|endoftext|>") == tok.pad_id
    assert tok.encode(sample) == ref.encode(sample, add_special_tokens=False).ids
    assert tok.decode(tok.encode(sample)) == sample
    assert load_tokenizer(f"hf:{folder / 'tokenizer.json'}").hash == tok.hash   # a file or its folder
    clone = pickle.loads(pickle.dumps(tok))   # grain / prepare workers
    assert clone.encode_batch([sample, "x"]) == [tok.encode(sample), tok.encode("x")]


def test_eos_from_tokenizer_config_changes_the_hash(hf_folder, tmp_path):
    folder, _ = hf_folder
    (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    piece = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).id_to_token(300)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": piece}))
    other = load_tokenizer(f"hf:{tmp_path}")
    base = load_tokenizer(f"hf:{folder}")
    assert other.eos_token == piece and other.eos_id == 300 != base.eos_id and other.hash != base.hash
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(DataError, match="eos_token '<nope>'.*not in the vocabulary"):
        load_tokenizer(f"hf:{tmp_path}")


def test_prepare_and_run_copy_with_hf_tokenizer(hf_folder, tmp_path):
    folder, text = hf_folder
    (tmp_path / "docs.txt").write_text(text[:20_000])
    out = tmp_path / "prepared"
    pipeline.prepare([str(tmp_path / "docs.txt")], str(out), f"hf:{folder}", pipeline.PrepareOptions(val_fraction=0.1),
                     num_workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())["tokenizer"]
    tok = load_tokenizer(f"hf:{folder}")
    assert manifest["kind"] == "hf" and manifest["hash"] == tok.hash and (out / "tokenizer.json").is_file()
    assert load_tokenizer(str(out)).hash == tok.hash
    ds = store.open_prepared(str(out), "train")
    first_doc = np.asarray(ds.read(0, int(ds.doc_offsets[1]))).tolist()   # one document, then EOS
    body = tok.decode(first_doc[:-1])
    assert first_doc[-1] == tok.eos_id and len(body) > 20 and body in text and tok.encode(body) == first_doc[:-1]
    # the run keeps a copy (checkpoint.save_tokenizer), loadable when the data folder moves
    copy = checkpoint.save_tokenizer(out, tmp_path / "run")
    assert copy is not None and load_tokenizer(str(copy)).hash == tok.hash


def test_bad_hf_tokenizer_is_one_line_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer\.json: not a Hugging Face tokenizer\.json"):
        load_tokenizer(f"hf:{tmp_path}")
    with pytest.raises(DataError, match="cannot read Hugging Face tokenizer"):
        load_tokenizer(f"hf:{tmp_path / 'missing'}")
    assert isinstance(HFTokenizer, type)
