"""Hugging Face and lm-evaluation-harness interoperability (optional extras `[hf]` and `[eval]`).

    export.py            a run → a Hugging Face folder (`python -m mosaic_jax.export --format=hf`)
    modeling_mosaic.py   the PyTorch memory mosaic (v1, v2) shipped in exports (trust_remote_code)
    weights.py           params ↔ Hugging Face state_dicts and configs
    tokenizer.py         a run's tokenizer → tokenizer.json
    import_gpt2.py       a transformers GPT-2 → this library's GPT-2 params
    lm_eval_adapter.py   lm_eval model type `mosaic_jax`; lm_eval_cli.py runs lm_eval with it registered

Nothing here is imported by the rest of the library; transformers, tokenizers, torch and lm_eval are imported only
by these modules.
"""
