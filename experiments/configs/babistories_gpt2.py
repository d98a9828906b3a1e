"""The GPT-2 baseline of the paper's BabiStories comparison: the same recipe as babistories_mm.py (the
paper tuned it for the transformer and transferred it), 12 layers, C 768, 12 heads, MLP 4C, block 512."""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("babistories_mm", pathlib.Path(__file__).with_name("babistories_mm.py"))
_mm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mm)


def get_config():
    c = _mm.get_config()
    c.model.arch = "gpt2"
    return c
