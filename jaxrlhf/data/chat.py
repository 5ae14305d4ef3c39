"""Conversations (lists of ``{"role", "content"}`` messages) rendered to prompt and answer
texts with the tokenizer's chat template, for the preference and SFT readers."""

from __future__ import annotations

from typing import Any

from jaxrlhf.data.rows import BadRow, type_name


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)



def check_messages(value: Any, field: str, reason: str) -> list[dict]:
    if not is_messages(value):
        raise BadRow(reason, field, f"expected a list of {{'role', 'content'}} messages, got {type_name(value)}")
    for i, m in enumerate(value):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(reason, f"{field}[{i}]", "a message needs string 'role' and 'content'")
    return value



def common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n



def last_assistant(messages: list[dict], field: str) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    raise BadRow("bad response type", field, "no assistant message")



def adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos



def render_turns(tokenizer, prompt: list[dict], fulls: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """``(prompt_text, response_texts)``: each conversation in ``fulls`` (field -> messages)
    rendered minus ``prompt`` rendered with the generation prompt.

    The texts follow the plain-row convention the tokenisers rely on: a leading BOS string
    is dropped when the tokenizer adds BOS itself, and a trailing EOS string is dropped
    because EOS is appended as a token (otherwise both would appear twice).
    """
    import jinja2

    try:
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in fulls.values()]
    except (jinja2.TemplateError, ValueError) as e:  # templates raise on roles they reject
        raise BadRow("chat template mismatch", None, f"the chat template failed: {e}") from None
    responses = []
    for key, text in zip(fulls, full_texts):
        if not text.startswith(prompt_text):
            raise BadRow("chat template mismatch", key, "the rendered conversation does not start with the "
                       "rendered prompt (add_generation_prompt=True)")
        text = text[len(prompt_text):]
        eos = getattr(tokenizer, "eos_token", None)
        if eos and text.rstrip().endswith(eos):
            text = text.rstrip()[:-len(eos)]
        if not text.strip():
            raise BadRow("empty response", key)
        responses.append(text)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt_text.startswith(bos) and adds_bos(tokenizer):
        prompt_text = prompt_text[len(bos):]
    return prompt_text, responses
