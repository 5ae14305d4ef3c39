"""``jaxrlhf generate``: sample or greedy-decode responses for a file of prompts."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def generate_file(model_dir: str, prompts_file: str, out_file: str, *, config, batch_size: int = 16,
                  max_prompt_length: int = 256, seed: int = 0, mesh=None, dtype: str = "float32") -> dict:
    """Write one JSON line per prompt row: the row's fields plus ``response``, ``response_tokens``
    and ``finished`` (EOS emitted). Every row is kept, in order; the last batch is padded to
    the batch size so that one compilation serves the whole file.

    A row that cannot be rendered (no prompt, a ``messages`` row and a tokenizer without a
    chat template, ...) stops the run with ``FILE:LINE: reason``: the output must line up
    with the input row by row, so no row is skipped."""
    from jaxrlhf.data import pad_id_of
    from jaxrlhf.data.prompts import load_prompts, tokenize_prompts
    from jaxrlhf.generate import generate
    from jaxrlhf.models import from_pretrained, load_tokenizer
    from jaxrlhf.tokenizer_check import check_tokenizer_fits, model_vocab_size

    tokenizer = load_tokenizer(model_dir)
    check_tokenizer_fits(tokenizer, model_vocab_size(model_dir), tokenizer_at=model_dir, model_at=model_dir)
    examples, report = load_prompts(prompts_file, tokenizer=tokenizer, strict=True)
    arrays = tokenize_prompts(examples, tokenizer, max_length=max_prompt_length, report=report)
    model = from_pretrained(model_dir, dtype=dtype, mesh=mesh)
    graphdef, state = nnx.split(model)
    eos = tokenizer.eos_token_id
    pad = pad_id_of(tokenizer)
    sample = jax.jit(lambda s, ids, mask, key: generate(graphdef, s, ids, mask, key, config=config,
                                                        eos_id=eos, pad_id=pad))
    key = jax.random.key(seed)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    generated, seconds = 0, 0.0
    with out.open("w", encoding="utf-8") as f:
        for start in tqdm(range(0, len(arrays), batch_size), desc="generate", unit="batch"):
            rows = np.arange(start, min(start + batch_size, len(arrays)))
            padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
            batch = arrays.take(padded)
            t0 = time.perf_counter()
            context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
            with context:
                gen = jax.block_until_ready(sample(state, batch.input_ids, batch.attention_mask,
                                                   jax.random.fold_in(key, start)))
            seconds += time.perf_counter() - t0
            tokens, mask, finished = (np.asarray(x) for x in (gen.tokens, gen.mask, gen.finished))
            for j, row in enumerate(rows):
                n = int(mask[j].sum()) - int(finished[j])  # tokens before EOS
                text = tokenizer.decode(tokens[j, :n], skip_special_tokens=True)
                example = examples[row]
                record = {**example.meta, "prompt": example.prompt, "response": text,
                          "response_tokens": n, "finished": bool(finished[j])}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                generated += int(mask[j].sum())
    return {"rows": len(arrays), "generated_tokens": generated, "seconds": seconds,
            "prompts": report.as_dict()}
