"""A tiny learnable ranking task: a char tokenizer, a tiny Llama folder and ranked data.

Responses are short letter strings; a response's score is how many 'z' it contains, so
the better answer is recognisable from its tokens alone.
"""

from __future__ import annotations

import json
import string

import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from hf_models import build_hf_model

CHARS = string.ascii_lowercase + " :?"


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(CHARS)})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_model_folder(folder, *, seed=0, hidden=32, layers=2):
    from hf_models import tiny_llama_config
    tok = char_tokenizer()
    config = tiny_llama_config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                               tie_word_embeddings=True)
    build_hf_model(config, folder, seed=seed)
    tok.save_pretrained(folder)
    return folder


def ranked_rows(n: int, k: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxy")
    rows = []
    for _ in range(n):
        prompt = "q: " + "".join(rng.choice(letters, size=rng.integers(3, 7)))
        counts = rng.choice(4, size=k, replace=False)  # distinct: no ties
        responses = []
        for c in counts:
            body = list(rng.choice(letters, size=rng.integers(4, 8)))
            for pos in rng.choice(len(body), size=c, replace=False):
                body[pos] = "z"
            responses.append(["".join(body)])
        rows.append({"prompt": prompt, "response": responses, "score": [int(c) for c in counts]})
    return rows


def write_jsonl(rows, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_config_yaml(tmp_path, model_dir, train_file, *, extra: str = "") -> str:
    text = f"""
seed: 0
output_dir: {tmp_path / 'run'}
model: {{path: {model_dir}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{train_file}], eval_fraction: 0.2, max_length: 24}}
train:
  epochs: 1
  batch_size: 8
  log_every: 5
  optim: {{learning_rate: 3.0e-3, warmup_steps: 2}}
{extra}
"""
    path = tmp_path / "rm.yaml"
    path.write_text(text)
    return str(path)


def copy_rows(n: int, seed: int = 0) -> list[dict]:
    """SFT rows: the answer copies the letters after 'q: '."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxy")
    rows = []
    for _ in range(n):
        word = "".join(rng.choice(letters, size=rng.integers(3, 7)))
        rows.append({"prompt": f"q: {word} ", "response": word})
    return rows


def copy_pairs(n: int, seed: int = 0) -> list[dict]:
    """DPO pairs: chosen copies the word, rejected is other letters of the same length."""
    rng = np.random.default_rng(seed)
    rows = []
    for row in copy_rows(n, seed):
        word = row["response"]
        other = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxy"), size=len(word)))
        rows.append({"prompt": row["prompt"], "chosen": word, "rejected": other})
    return rows
