"""Ranked examples -> fixed-shape token arrays, and the train/eval split.

Every sequence is ``prompt tokens + response tokens + [EOS]`` right-padded to exactly
``max_length``; batching (and trimming batches to their longest row) is in
:mod:`jaxrlhf.data.batching`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.preference import CleanReport, RankedExample

# A stream of SeedSequence([seed, _SPLIT_STREAM]) that no epoch number reaches, so the
# train/eval split is not correlated with the order of any epoch.
_SPLIT_STREAM = 0x73706C6974  # "split"


@dataclasses.dataclass
class RankedArrays:
    input_ids: np.ndarray  # [N, K, T] int32, right-padded with the pad id
    attention_mask: np.ndarray  # [N, K, T] int32, 1 = real token
    scores: np.ndarray  # [N, K] float32, 0 in padded slots
    slot_mask: np.ndarray  # [N, K] bool, False for padded response slots (K varies per prompt)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, index: np.ndarray) -> RankedArrays:
        """The rows at ``index`` (a copy), e.g. one batch or one split."""
        index = np.asarray(index, dtype=np.int64)
        return RankedArrays(self.input_ids[index], self.attention_mask[index],
                            self.scores[index], self.slot_mask[index])

    def as_dict(self) -> dict[str, np.ndarray]:
        # not dataclasses.asdict: that deep-copies every array
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def pad_id_of(tokenizer) -> int:
    """The pad token id, else the EOS id, else 0 (padding is masked, the value only has to exist)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _split_special(with_special: list[int], plain: list[int]) -> tuple[list[int], list[int], list[int]]:
    """``(prefix, body, suffix)``: the tokens the tokenizer added around the text (BOS...)."""
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start], plain, with_special[start + len(plain):]
    return [], with_special, []  # special tokens inside the text: treat everything as text


def _fit_prompt(parts: tuple[list[int], list[int], list[int]], longest_response: int,
                max_length: int, min_prompt_tokens: int) -> tuple[list[int], bool]:
    """The prompt tokens kept next to a response of ``longest_response`` tokens, and whether cut."""
    prefix, body, suffix = parts
    total = len(prefix) + len(body) + len(suffix)
    special = len(prefix) + len(suffix)
    floor = min(total, max(min_prompt_tokens, special))  # never cut below this
    keep = max(floor, max_length - longest_response)
    if keep >= total:
        return prefix + body + suffix, False
    body_keep = keep - special
    return prefix + body[len(body) - body_keep:] + suffix, True


def layout_sequences(prompts: Sequence[str], responses: Sequence[Sequence[str]], tokenizer, *,
                     max_length: int, min_prompt_tokens: int | None, append_eos: bool,
                     num_slots: int, report: CleanReport | None) -> tuple[np.ndarray, ...]:
    """``prompt + response + [EOS]`` for every response of every prompt, right-padded.

    Returns ``(input_ids, attention_mask, loss_mask, slot_mask)``: the first three
    ``[N, num_slots, max_length]`` int32, ``slot_mask`` ``[N, num_slots]`` bool (False for
    the empty slots of prompts with fewer responses). ``loss_mask`` is 1 on the response
    tokens and EOS that survive truncation, never on position 0 (nothing predicts it).
    The prompt is cut once per prompt, for its longest response, so all its responses see
    the same prompt tokens; truncations are counted in ``report.truncated``.
    """
    # input_ids, attention_mask, loss_mask: [N, K, T]; slot_mask: [N, K]
    min_prompt = max_length // 4 if min_prompt_tokens is None else min_prompt_tokens
    if max_length < 2 or not 0 <= min_prompt < max_length:
        raise ValueError(f"need max_length >= 2 and 0 <= min_prompt_tokens < max_length, "
                         f"got {max_length} and {min_prompt}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    eos = [int(eos_id)] if append_eos and eos_id is not None else []
    prompts = list(prompts)
    # Batched calls: the fast tokenizer does the whole list in Rust.
    with_special = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    plain = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    flat = tokenizer([r for rs in responses for r in rs], add_special_tokens=False)["input_ids"]

    n, k, t = len(prompts), num_slots, max_length
    input_ids = np.full((n, k, t), pad_id_of(tokenizer), np.int32)
    attention_mask = np.zeros((n, k, t), np.int32)
    loss_mask = np.zeros((n, k, t), np.int32)
    slot_mask = np.zeros((n, k), bool)
    counts = collections.Counter()
    at = 0
    for i in range(n):
        parts = _split_special(list(with_special[i]), list(plain[i]))
        if len(parts[0]) + len(parts[2]) >= t:
            raise ValueError(f"max_length={t} leaves no room beside the tokenizer's special tokens")
        seqs = [list(ids) + eos for ids in flat[at:at + len(responses[i])]]
        at += len(responses[i])
        prompt, cut = _fit_prompt(parts, max(map(len, seqs)), t, min_prompt)
        if cut:
            counts["prompt_truncated"] += 1
        for j, response in enumerate(seqs):
            room = t - len(prompt)
            if len(response) > room:
                counts["response_truncated"] += 1
                response = response[:room]
            seq = prompt + response
            input_ids[i, j, :len(seq)] = seq
            attention_mask[i, j, :len(seq)] = 1
            loss_mask[i, j, len(prompt):len(seq)] = 1
            slot_mask[i, j] = True
    loss_mask[..., 0] = 0
    if report is not None:
        report.truncated.update(counts)
    return input_ids, attention_mask, loss_mask, slot_mask


def tokenize_ranked(examples: Sequence[RankedExample], tokenizer, *, max_length: int,
                    min_prompt_tokens: int | None = None, append_eos: bool = True,
                    num_slots: int | None = None, report: CleanReport | None = None) -> RankedArrays:
    """Tokenise ranked examples into ``[N, K, max_length]`` arrays.

    A sequence is ``tokenizer(prompt)`` (with special tokens, so BOS when the tokenizer
    adds one) + ``tokenizer(response, add_special_tokens=False)`` + ``[eos_token_id]``
    (if ``append_eos`` and the tokenizer has an EOS).

    Truncation policy, when a sequence is longer than ``max_length``:

    1. The response is kept whole where possible; the prompt is cut FROM THE LEFT (its
       end, next to the answer, is kept). Special tokens the tokenizer adds around the
       prompt (BOS) are never cut.
    2. The prompt keeps at least ``min(len(prompt), min_prompt_tokens)`` tokens (default
       ``max_length // 4``).
    3. A response still too long is cut from the right, losing its EOS.

    The prompt is cut once per example, for its longest response, so all K responses of
    a prompt are scored against the same context (a ranking compares like with like).
    ``report.truncated`` counts ``'prompt_truncated'`` per example and
    ``'response_truncated'`` per response.

    ``num_slots`` (K) defaults to the most responses of any example; examples with fewer
    are padded with empty slots (``slot_mask`` False, score 0, all-pad tokens).
    """
    # input_ids, attention_mask: [N, K, T]; scores, slot_mask: [N, K]
    examples = list(examples)
    if not examples:
        raise ValueError("tokenize_ranked: no examples")
    most = max(len(ex.responses) for ex in examples)
    k = most if num_slots is None else num_slots
    for ex in examples:
        if len(ex.responses) > k:
            raise ValueError(f"{ex.source}:{ex.line}: {len(ex.responses)} responses but num_slots={k}")

    input_ids, attention_mask, _, slot_mask = layout_sequences(
        [ex.prompt for ex in examples], [ex.responses for ex in examples], tokenizer,
        max_length=max_length, min_prompt_tokens=min_prompt_tokens, append_eos=append_eos,
        num_slots=k, report=report)
    scores = np.zeros(slot_mask.shape, np.float32)
    for i, ex in enumerate(examples):
        scores[i, :len(ex.scores)] = ex.scores
    return RankedArrays(input_ids, attention_mask, scores, slot_mask)


def split_train_eval(data: RankedArrays, eval_fraction: float,
                     seed: int) -> tuple[RankedArrays, RankedArrays]:
    """A deterministic ``(train, eval)`` split; eval gets ``round(N * fraction)`` rows, at least 1.

    Both parts keep the original row order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(data)
    n_eval = 0 if eval_fraction == 0 else max(1, round(n * eval_fraction))
    if n_eval >= n and n_eval > 0:
        raise ValueError(f"eval_fraction={eval_fraction} of {n} rows leaves no training rows")
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    return data.take(np.sort(order[n_eval:])), data.take(np.sort(order[:n_eval]))

