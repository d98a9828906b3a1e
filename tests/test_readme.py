"""The README's inference commands run as written, one after another, after a quickstart-like training.

The training is the quickstart's command (preset tiny_cpu, workdir runs/tiny_cpu) shortened to a few steps of a
smaller model on a small byte-level preparation (the inference commands read the model's shape from the workdir;
the preset's size only doubled the CPU time of `generate`); then every command of the README's "Inference" block
runs verbatim from a checkout laid out like the README assumes (`../shared/data` beside it)."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def readme_block(section: str) -> list[str]:
    """The commands of the first ```bash block under `## <section>`, comments and continuations resolved."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def _run(words, cwd, env):
    if words[0] == "python":
        words = [sys.executable, *words[1:]]
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "wikitext2").is_dir(), reason="../shared/data is not beside the checkout")
def test_readme_inference_commands_run_as_written(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    src = checkout / "stories.txt"
    src.write_text((SHARED / "data" / "tinystories" / "valid_v1_prefix.txt").read_text()[:200_000])
    prep = _run(["python", "-m", "mosaic_jax.prepare_data", f"--input={src}", "--out=runs/data/tiny_byte",
                 "--tokenizer=byte", "--progress=false"], checkout, env)
    assert prep.returncode == 0, prep.stderr[-2000:]
    train = _run(["python", "-m", "mosaic_jax.train", "--config=tiny_cpu", "--workdir=runs/tiny_cpu",
                  "--config.data.path=runs/data/tiny_byte", "--config.train.steps=3", "--config.train.eval_every=0",
                  "--config.train.sample_tokens=0", "--config.train.checkpoint_every=3",
                  "--config.model.n_layer=2", "--config.model.n_embd=32", "--config.model.pmem_size=64",
                  "--config.model.block_size=32", "--config.train.global_batch=8"], checkout, env)
    assert train.returncode == 0, train.stderr[-3000:]

    commands = readme_block("Inference")
    assert [w[2] for w in commands] == ["mosaic_jax.generate", "mosaic_jax.evaluate"]
    gen, ev = (_run(words, checkout, env) for words in commands)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.startswith("Once upon a time") and len(gen.stdout) > len("Once upon a time\n")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert re.search(r"^loss \d+\.\d+ \| perplexity", ev.stdout, re.M)
    assert (checkout / "runs" / "tiny_cpu" / "eval" / "eval.json").is_file()
