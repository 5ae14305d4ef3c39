"""A character-level tokenizer with byte fallback for the length-control task.

One character is one token, so a response's token count is its character count (whitespace
aside) and a small model can learn length directly. Characters not seen when the tokenizer
was built are written as their UTF-8 bytes (``<0xE4>`` ...), so every string round-trips;
no normalizer touches the text, for the same reason.

The one exception is a count written before 字 (``30字``, ``三十五个字``, ``３０字``): its
number, 1 to 99 in arabic, full-width or Chinese numerals, is ONE token (``30``, ``三十五``),
as Llama 3's tokenizer keeps up to three digits together. A limit is then a single symbol
whose embedding the model can learn to read as a length, instead of a digit string it must
first compose (the slow part of learning this task from scratch). A pre-tokenizer isolates
such counts (a regex with a look-ahead for 字) and BPE merges join their characters;
everywhere else, numbers in the text included, each character stays one token, so counts
of answers stay exact. The pre-tokenizer only splits, so text still round-trips.

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
_CN = "零一二三四五六七八九"
_FULL = "０１２３４５６７８９"
# A count directly before 字/个字 (look-ahead, not consumed); every other character alone.
COUNT_PATTERN = (r"[0-9]{1,2}(?=个?字)|[０-９]{1,2}(?=个?字)|[零〇一二两三四五六七八九十]{1,3}(?=个?字)"
                 r"|[\s\S]")


def count_merges() -> list[tuple[str, str]]:
    """BPE merges that make 1..99 one token in arabic, full-width and Chinese numerals.

    Ranked so that Chinese tens merge first: 三+十 -> 三十 before 十+五, else 三十五 would
    end as 三 + 十五 with no merge left to join them."""
    merges = [(digits[a], digits[b]) for digits in ("0123456789", _FULL) for a in range(1, 10) for b in range(10)]
    merges += [(_CN[a], "十") for a in range(2, 10)]
    merges += [("十", _CN[b]) for b in range(1, 10)]
    merges += [(_CN[a] + "十", _CN[b]) for a in range(2, 10) for b in range(1, 10)]
    return merges


def _is_scalar(c: str) -> bool:
    """Lone surrogates cannot be written as UTF-8, so they never become tokens."""
    return not 0xD800 <= ord(c) <= 0xDFFF


def char_vocab(texts: Iterable[str], *, min_count: int = 1) -> dict[str, int]:
    """Specials, then the 256 byte tokens, then the characters seen at least ``min_count``
    times (whitespace included), sorted so the same texts always give the same ids, then
    the count tokens (1..99 in three numeral systems) and any of their characters not seen."""
    counts = collections.Counter()
    for text in texts:
        counts.update(text)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for c in sorted(c for c, n in counts.items() if n >= min_count and _is_scalar(c)):
        vocab.setdefault(c, len(vocab))
    for a, b in count_merges():  # the count tokens, and their characters even if unseen
        for tok in (a, b, a + b):
            vocab.setdefault(tok, len(vocab))
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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = char_vocab(texts, min_count=min_count)
    raw = Tokenizer(models.BPE(vocab, merges=count_merges(), byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(COUNT_PATTERN), behavior="isolated")
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
