"""Helpers shared by the benchmark scripts: a random Llama of a stated size, saved as an HF folder."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path


def char_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(string.ascii_lowercase + " :")})
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama_folder(hidden=256, layers=4, heads=4, kv_heads=2, vocab=512, max_positions=512, seed=0,
                 folder: Path | None = None) -> Path:
    from jaxrlhf.models import LlamaConfig, create_model, save_pretrained

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         extra_json='{"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}')
    folder = folder or Path(tempfile.mkdtemp()) / "model"
    save_pretrained(create_model(config, seed=seed), folder, tokenizer=char_tokenizer())
    return folder
