"""A character-level tokenizer with byte fallback for the length-control task.

One character is one token, so a response's token count is its character count (whitespace
aside) and a small model can learn length directly. Characters not seen when the tokenizer
was built are written as their UTF-8 bytes (``<0xE4>`` ...), so every string round-trips;
no normalizer or pre-tokenizer touches the text, for the same reason.

Encoding a prompt (``add_special_tokens=True``) gives ``<s> prompt <answer>``: the answer
marker closes every prompt, as a chat template's assistant header does, so the model
knows where its answer starts and can count the characters it has written since. Every
stage (SFT, RM, DPO, PPO, generation) tokenises prompts this way and responses without
special tokens, and transformers applies the same post-processor when it loads
``tokenizer.json``, so an exported model is prompted the same way there.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import transformers

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<answer>")  # ids 0 .. 4
ANSWER_TOKEN = SPECIAL_TOKENS[4]
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 5 .. 260


def _is_scalar(c: str) -> bool:
    """Lone surrogates cannot be written as UTF-8, so they never become tokens."""
    return not 0xD800 <= ord(c) <= 0xDFFF


def char_vocab(texts: Iterable[str], *, min_count: int = 1) -> dict[str, int]:
    """Specials, then the 256 byte tokens, then the characters seen at least ``min_count``
    times (whitespace included), sorted so the same texts always give the same ids."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for c in sorted(c for c, n in counts.items() if n >= min_count and _is_scalar(c)):
        vocab.setdefault(c, len(vocab))
    return vocab


def build_char_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike | None = None, *,
                         min_count: int = 1) -> transformers.PreTrainedTokenizerFast:
    """A char tokenizer for ``texts``, saved with ``save_pretrained`` to ``out_dir`` if given.

    It adds ``<s>`` at the start of encoded text and ``<answer>`` at its end (EOS is appended
    by the data code; ``add_special_tokens=False`` adds neither), pads on
    the right by default and never reads ``<s>``/``</s>`` written in the text as special
    tokens (``split_special_tokens``), so text cannot forge an end of sequence.
    """
    import transformers  # heavy: imported here so that registering the rule stays light
    from tokenizers import Tokenizer, decoders, models, processors

    vocab = char_vocab(texts, min_count=min_count)
    raw = Tokenizer(models.BPE(vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    bos = SPECIAL_TOKENS[1]
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {ANSWER_TOKEN}", pair=f"{bos} $A {ANSWER_TOKEN} $B",
        special_tokens=[(bos, vocab[bos]), (ANSWER_TOKEN, vocab[ANSWER_TOKEN])])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="right", clean_up_tokenization_spaces=False, split_special_tokens=True,
        additional_special_tokens=[ANSWER_TOKEN])
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
