"""prepare_data --input=hf:...: Hugging Face dataset folders (save_to_disk, jsonl, parquet) made in the test from
real TinyStories documents give the same store as the text file they came from; specs parse; errors are one line.
No network: hub ids are only parsed, and the hub is switched off (offline mode) before `datasets` is imported."""
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mosaic_jax import prepare_data  # noqa: E402
from mosaic_jax.data import hf_source, ingest, pipeline, store  # noqa: E402
from mosaic_jax.data.errors import DataError  # noqa: E402

datasets = pytest.importorskip("datasets")
REPO = pathlib.Path(__file__).resolve().parents[1]
LINES = 300   # of TinyStories v1 train: 54 stories, 37 KB


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    """A text file of the first LINES lines of TinyStories v1 train, and its documents as ingest reads them."""
    folder = tmp_path_factory.mktemp("hf_corpus")
    text = folder / "stories.txt"
    with open(data_dir / "tinystories" / "train_v1_prefix_a.txt", encoding="utf-8") as f:
        text.write_text("".join(next(f) for _ in range(LINES)), encoding="utf-8")
    docs = list(ingest.iter_documents([str(text)]))
    assert len(docs) > 40 and any("\n\n" in d for d in docs)   # multi-paragraph stories survive as one document
    return text, docs


def _make_folder(kind: str, docs: list[str], root: pathlib.Path) -> tuple[str, str]:
    """A dataset folder of `kind` holding `docs`; returns (folder, the hf: spec that reads them)."""
    folder = root / kind
    if kind == "save_to_disk":   # a DatasetDict, text in a non-default column, another column beside it
        ds = datasets.Dataset.from_dict({"id": list(range(len(docs))), "story": docs})
        datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(folder))
        return str(folder), f"hf:{folder}:train@story"
    folder.mkdir()
    if kind == "jsonl":
        (folder / "stories.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    else:
        datasets.Dataset.from_dict({"text": docs, "n": [len(d) for d in docs]}).to_parquet(str(folder / "s.parquet"))
    return str(folder), f"hf:{folder}"


def _prepare(inputs, out, **kw):
    options = pipeline.PrepareOptions(val_fraction=0.1, **kw)
    return pipeline.prepare(inputs, str(out), "sp:400", options, num_workers=1, progress=False)


def _arrays(out) -> dict:
    return {split: (np.asarray(ds.tokens), np.asarray(ds.doc_offsets))
            for split in ("train", "validation") for ds in [store.open_prepared(str(out), split)]}


@pytest.mark.parametrize("kind", ["save_to_disk", "jsonl", "parquet"])
def test_dataset_folder_prepares_the_same_store_as_the_text_file(corpus, tmp_path, kind):
    text, docs = corpus
    reference = _prepare([str(text)], tmp_path / "from_text")
    folder, spec = _make_folder(kind, docs, tmp_path)
    result = _prepare([spec], tmp_path / "from_hf")
    # The same documents in the same order: the same trained tokenizer, split and token ids, exactly.
    assert result.manifest["tokenizer"]["hash"] == reference.manifest["tokenizer"]["hash"]
    got, want = _arrays(tmp_path / "from_hf"), _arrays(tmp_path / "from_text")
    for split in want:
        np.testing.assert_array_equal(got[split][0], want[split][0])
        np.testing.assert_array_equal(got[split][1], want[split][1])
    source, = result.manifest["sources"]
    assert source["format"] == "hf" and source["num_docs"] == len(docs)
    assert source["text_bytes"] == sum(len(d.encode()) for d in docs)
    assert source["split"] == "train" and source["text_field"] == ("story" if kind == "save_to_disk" else "text")
    store.verify(str(tmp_path / "from_hf"))
    # A re-run is a no-op; a changed folder is a different preparation and is refused.
    assert _prepare([spec], tmp_path / "from_hf").skipped
    if kind == "jsonl":
        with pytest.raises(DataError, match=f"{spec}:nope:train: cannot open local folder .*'nope' not found"):
            hf_source.HFReader(f"{spec}:nope:train")
        with open(os.path.join(folder, "stories.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"text": "One more story."}) + "\n")
        with pytest.raises(DataError, match="holds a different prepared dataset"):
            _prepare([spec], tmp_path / "from_hf")


def test_hf_and_file_inputs_mix_in_order(corpus, tmp_path):
    text, docs = corpus
    _, spec = _make_folder("save_to_disk", docs[:20], tmp_path)
    result = _prepare([spec, str(text)], tmp_path / "mixed")
    assert [s["path"] for s in result.manifest["sources"]] == [spec, str(text)]
    assert [s["num_docs"] for s in result.manifest["sources"]] == [20, len(docs)]


@pytest.mark.parametrize("spec, parsed", [
    ("hf:roneneldan/TinyStories", ("roneneldan/TinyStories", [], None)),
    ("hf:roneneldan/TinyStories:validation", ("roneneldan/TinyStories", ["validation"], None)),
    ("hf:HuggingFaceFW/fineweb:sample-10BT:train@text", ("HuggingFaceFW/fineweb", ["sample-10BT", "train"], "text")),
    ("hf:wikitext:wikitext-2-raw-v1:test@meta.text", ("wikitext", ["wikitext-2-raw-v1", "test"], "meta.text")),
])
def test_hub_specs_parse(spec, parsed):
    assert hf_source.parse_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("hf:", "expected hf:ORG/NAME"),
    ("hf:a/b:c:d:e", "expected hf:ORG/NAME"),
    ("hf:a/b::train", "expected hf:ORG/NAME"),
    ("hf:a/b@", "empty text field"),
    ("hf:/no/such/folder/x", "neither a local folder nor a hub id"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        hf_source.parse_spec(spec)


def test_errors_name_the_spec_and_what_exists(corpus, tmp_path):
    _, docs = corpus
    folder, _ = _make_folder("save_to_disk", docs[:5], tmp_path)
    with pytest.raises(DataError, match=r"unknown text field 'text' \(columns: id, story\)"):
        hf_source.HFReader(f"hf:{folder}")
    with pytest.raises(DataError, match=r"unknown split 'validation' \(splits: train, test\)"):
        hf_source.HFReader(f"hf:{folder}:validation@story")
    no_rows = datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    no_rows.save_to_disk(str(tmp_path / "empty_saved"))
    (tmp_path / "empty_parquet").mkdir()
    no_rows.to_parquet(str(tmp_path / "empty_parquet" / "e.parquet"))
    for empty in ("empty_saved", "empty_parquet"):
        with pytest.raises(DataError, match=f"hf:{tmp_path / empty}: dataset .* has no rows"):
            hf_source.HFReader(f"hf:{tmp_path / empty}")
    numbers = tmp_path / "numbers"
    datasets.Dataset.from_dict({"text": [1, 2]}).save_to_disk(str(numbers))
    with pytest.raises(DataError, match="field 'text' is int, expected a string"):
        hf_source.HFReader(f"hf:{numbers}")
    with pytest.raises(DataError, match="save_to_disk folder; pass it as --input=hf:"):
        ingest.expand_inputs([folder])
    # The hub is off in tests: a hub id fails in one line that names it (nothing is downloaded).
    with pytest.raises(DataError, match="hf:roneneldan/TinyStories: cannot open hub dataset"):
        hf_source.HFReader("hf:roneneldan/TinyStories")


def test_missing_datasets_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)   # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"hf:a/b: hf: inputs need the datasets package .*mosaic_jax\[datasets\]"):
        hf_source.HFReader("hf:a/b")


def test_cli(corpus, tmp_path, capsys):
    _, docs = corpus
    folder, _ = _make_folder("save_to_disk", docs, tmp_path)   # not streamed: datasets then skips importing torch
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    ok = subprocess.run([sys.executable, "-m", "mosaic_jax.prepare_data", "--noprogress", f"--out={tmp_path / 'out'}",
                         f"--input=hf:{folder}:train@story", "--tokenizer=byte"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert store.read_manifest(str(tmp_path / "out"))["sources"][0]["num_docs"] == len(docs)
    # The error paths in-process (prepare_data.main returns the exit status): one line, nothing written.
    assert prepare_data.main(["--input", f"hf:{folder}", f"--out={tmp_path / 'bad'}", "--tokenizer=byte"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"prepare_data: error: hf:{folder}: unknown text field 'text' (columns: id, story)")
    assert not (tmp_path / "bad").exists()
    assert prepare_data.main(["--input", f"hf:{folder}:train@story", f"--out={tmp_path / 'dry'}", "--dry_run"]) == 0
    assert "would prepare 1 input(s)" in capsys.readouterr().out and not (tmp_path / "dry").exists()
