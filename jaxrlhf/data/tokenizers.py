"""A small character-level tokenizer with byte fallback, for models made from scratch.

``jaxrlhf init-model`` saves one next to a random model so the folder works in every stage
(and in transformers) without a tokenizer from elsewhere. One character is one token;
characters outside the built alphabet are written as their UTF-8 bytes (``<0xE4>`` ...),
so every string round-trips and nothing maps to ``<unk>``. ``<s>`` is added at the start of
encoded text, as Llama's tokenizer does; EOS is appended by the data code. The chat
template renders ``<|user|>\\n...\\n<|assistant|>\\n...</s>\\n`` so ``messages`` rows work.

The length-control task (jaxrlhf/tasks/length_control/tokenizer.py) builds its own variant
(an answer marker and one-token counts); this one is the generic, task-free kind.
"""

from __future__ import annotations

import os
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import transformers

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0 .. 3, as configs/models/*-tiny.yaml expect
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 4 .. 259
DEFAULT_ALPHABET = string.printable  # ASCII letters, digits, punctuation and whitespace: 100 characters
# Newlines as jinja string literals: transformers renders with trim_blocks, which would eat
# a literal newline right after a block tag.
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def char_vocab(alphabet: str = DEFAULT_ALPHABET) -> dict[str, int]:
    """Specials, the 256 byte tokens, then ``alphabet``'s distinct characters in order."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for c in alphabet:
        vocab.setdefault(c, len(vocab))
    return vocab


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET, out_dir: str | os.PathLike | None = None
                         ) -> transformers.PreTrainedTokenizerFast:
    """The tokenizer (``len() == 260 + distinct characters``, 360 by default), saved with
    ``save_pretrained`` to ``out_dir`` if given. ``<s>``/``</s>`` written in text are read as
    characters (``split_special_tokens``), so data cannot forge an end of sequence."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = char_vocab(alphabet)
    raw = Tokenizer(models.BPE(vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="right", clean_up_tokenization_spaces=False, split_special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
