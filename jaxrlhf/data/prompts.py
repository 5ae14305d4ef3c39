"""Prompt-only data for rollouts (PPO, generation, evaluation): load, clean, left-pad.

Rows: ``{"prompt": str}`` (other keys are kept as metadata, e.g. ``limit``) or
``{"messages": [...]}`` rendered with the chat template and a generation prompt.
Prompts are LEFT-padded so that every row's next token goes to the same position.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxrlhf.data.chat import adds_bos, check_messages, is_messages
from jaxrlhf.data.rows import BadRow, CleanReport, clean_rows, prompt_text, type_name
from jaxrlhf.data.tokenize import pad_id_of


@dataclasses.dataclass(frozen=True)
class PromptExample:
    prompt: str
    meta: dict  # the row's other fields (e.g. a length limit), for rule rewards and reports
    source: str
    line: int


def _render_messages(row: dict, tokenizer, field: str = "messages") -> str:
    """The chat-template rendering of ``row[field]`` (``messages``, or trl's conversational
    ``prompt``) with the generation prompt: what the model continues from."""
    messages = check_messages(row[field], field, "bad prompt type")
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]  # an answer present in the data is not part of the prompt
    if not messages or not "".join(m["content"] for m in messages).strip():
        raise BadRow("empty prompt", field)
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise BadRow("chat template mismatch", field, "message rows need a tokenizer with a chat template")
    import jinja2

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except (jinja2.TemplateError, ValueError) as e:  # templates raise on roles they reject
        raise BadRow("chat template mismatch", field, f"the chat template failed: {e}") from None
    # tokenize_prompts adds the tokenizer's BOS: a template that writes it too would give two.
    # SFT and preference rows drop it the same way, so rollouts see the prompts SFT trained on.
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def load_prompts(paths: str | os.PathLike | list, *, tokenizer=None,
                 strict: bool = False) -> tuple[list[PromptExample], CleanReport]:
    def parse(row, path, line):
        if not isinstance(row, dict):
            raise BadRow("not an object", None, f"got {type_name(row)}")
        if row.get("messages") is not None:
            text = _render_messages(row, tokenizer)
        elif is_messages(row.get("prompt")):  # trl's conversational prompt-only / prompt-completion
            text = _render_messages(row, tokenizer, "prompt")
        else:
            text = prompt_text(row)
        meta = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
        return PromptExample(text, meta, path, line)

    return clean_rows(paths, parse, strict=strict, what="prompt")


@dataclasses.dataclass
class PromptArrays:
    input_ids: np.ndarray  # [N, P] int32, LEFT-padded
    attention_mask: np.ndarray  # [N, P] int32
    index: np.ndarray  # [N] int64: the example each row came from

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, index) -> "PromptArrays":
        index = np.asarray(index, dtype=np.int64)
        return PromptArrays(self.input_ids[index], self.attention_mask[index], self.index[index])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "index": self.index}


def tokenize_prompts(examples: list[PromptExample], tokenizer, *, max_length: int,
                     report: CleanReport | None = None) -> PromptArrays:
    """Left-padded prompt tokens; a prompt longer than ``max_length`` keeps its END (the
    instruction usually closes a chat-formatted prompt) and is counted as truncated."""
    pad = pad_id_of(tokenizer)
    ids = np.full((len(examples), max_length), pad, np.int32)
    mask = np.zeros((len(examples), max_length), np.int32)
    for row, example in enumerate(examples):
        tokens = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        if len(tokens) > max_length:
            tokens = tokens[-max_length:]
            if report is not None:
                report.truncated["prompt_truncated"] += 1
        ids[row, max_length - len(tokens):] = tokens
        mask[row, max_length - len(tokens):] = 1
    return PromptArrays(ids, mask, np.arange(len(examples), dtype=np.int64))


def prompt_meta(examples: list[PromptExample], index: np.ndarray) -> list[dict[str, Any]]:
    return [examples[i].meta for i in np.asarray(index)]
