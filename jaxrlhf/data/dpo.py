"""DPO data: ranked examples -> (chosen, rejected) pairs -> ``[N, 2, T]`` arrays with a loss mask.

Pairs come from :func:`~jaxrlhf.data.preference.load_preference_data` (ranked lists, pairs
and conversational pairs all load as ranked examples) followed by :func:`ranked_to_pairs`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.preference import CleanReport, RankedExample
from jaxrlhf.data.sft import tokenize_prompt_responses

PAIR_MODES = ("best_vs_worst", "all_pairs")


def _pair(ex: RankedExample, chosen: int, rejected: int) -> RankedExample:
    return RankedExample(ex.prompt, (ex.responses[chosen], ex.responses[rejected]), (1.0, 0.0),
                         ex.source, ex.line)


def ranked_to_pairs(examples: Sequence[RankedExample], mode: str = "best_vs_worst") -> list[RankedExample]:
    """Turn K-wise ranked examples into (chosen, rejected) pairs, scores ``(1.0, 0.0)``.

    * ``"best_vs_worst"``: one pair per example, the highest-scored response against the
      lowest-scored one (on a tie, the first of them in the row);
    * ``"all_pairs"``: for every index pair ``a < b`` in row order whose scores differ, the
      higher-scored one as chosen; ties give no pair.

    An example whose scores are all tied gives no pair in either mode.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair mode {mode!r}; expected one of {', '.join(PAIR_MODES)}")
    pairs = []
    for ex in examples:
        s = ex.scores
        if mode == "best_vs_worst":
            best, worst = s.index(max(s)), s.index(min(s))
            if s[best] > s[worst]:
                pairs.append(_pair(ex, best, worst))
            continue
        for a, b in itertools.combinations(range(len(s)), 2):
            if s[a] != s[b]:
                pairs.append(_pair(ex, a, b) if s[a] > s[b] else _pair(ex, b, a))
    return pairs


@dataclasses.dataclass
class PairArrays:
    input_ids: np.ndarray  # [N, 2, T] int32 (0 = chosen, 1 = rejected), right-padded with the pad id
    attention_mask: np.ndarray  # [N, 2, T] int32, 1 = real token
    loss_mask: np.ndarray  # [N, 2, T] int32, 1 on response tokens (+ EOS), as SFTArrays.loss_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, index: np.ndarray) -> PairArrays:
        """The rows at ``index`` (a copy), e.g. one batch or one split."""
        index = np.asarray(index, dtype=np.int64)
        return PairArrays(self.input_ids[index], self.attention_mask[index], self.loss_mask[index])

    def as_dict(self) -> dict[str, np.ndarray]:
        # not dataclasses.asdict: that deep-copies every array
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def tokenize_pairs(pairs: Sequence[RankedExample], tokenizer, *, max_length: int,
                   min_prompt_tokens: int | None = None, append_eos: bool = True,
                   report: CleanReport | None = None) -> PairArrays:
    """Tokenise (chosen, rejected) pairs into ``[N, 2, max_length]`` arrays.

    Layout and truncation are ``tokenize_ranked``'s (see ``tokenize_sft``): the prompt is
    cut once per pair, for the longer response, so chosen and rejected are scored after the
    same prompt tokens and their log-ratio compares the answers only. Slot 0 is the
    higher-scored response (``ranked_to_pairs`` puts it first).
    """
    # input_ids, attention_mask, loss_mask: [N, 2, T]
    pairs = list(pairs)
    if not pairs:
        raise ValueError("tokenize_pairs: no pairs")
    for ex in pairs:
        if len(ex.responses) != 2 or not ex.scores[0] > ex.scores[1]:
            raise ValueError(f"{ex.source}:{ex.line}: need exactly 2 responses, chosen (scored higher) "
                             f"first, got scores {ex.scores}; use ranked_to_pairs")
    arrays = tokenize_prompt_responses(
        [ex.prompt for ex in pairs], [ex.responses for ex in pairs], tokenizer, max_length=max_length,
        min_prompt_tokens=min_prompt_tokens, append_eos=append_eos, report=report)
    return PairArrays(*arrays)
