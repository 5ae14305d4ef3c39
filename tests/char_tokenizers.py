"""A character-level tokenizer (BOS added like Llama's) and chat templates for data tests."""

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
VOCAB = {t: i for i, t in enumerate(SPECIALS + list("abcdefghijklmnopqrstuvwxyz0123456789 .,?!:<>/|\n"))}
PAD, BOS, EOS = 0, 1, 2

# Renders "<s><user>hi<assistant>yo</s>"; the generation prompt is "<assistant>".
CHAT = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
# Inconsistent on purpose: assistant turns render as "<bot>" but the generation prompt is "<assistant>".
BAD_CHAT = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<bot>{% else %}<{{ m['role'] }}>"
            "{% endif %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def char_tokenizer(bos=True, chat_template=None):
    """One token per character; BOS added by the post-processor like Llama's tokenizer."""
    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = chat_template
    return tok
