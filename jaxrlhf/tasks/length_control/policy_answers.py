"""Ranked RM rows from the SFT model's own answers (the seed's and InstructGPT's recipe).

The seed ranked, for each prompt, the DPO pair's two answers together with the SFT model's
own answer; InstructGPT's labellers ranked K samples of the policy. Either way the reward
model learns to tell apart the answers PPO will actually produce, which the builder's
extractive drafts alone do not show it: the SFT model's samples drift in content and miss
the limit in their own way. :func:`policy_prompts_file` lists each prompt
``answers_per_prompt`` times for ``jaxrlhf generate`` (the ordinary sampler);
:func:`rank_policy_answers` groups the samples by prompt and ranks them by closeness to the
limit, in the RM's ranked format (``{"prompt", "response": [[a], ...], "score": [...]}``).
When the prompt rows carry their ``source`` paragraph (the builder's do), an answer whose
:func:`~jaxrlhf.tasks.length_control.score.fidelity` to it is below FAITHFUL_MIN ranks below
every faithful one, as the builder's unfaithful drafts do (:func:`.data.rm_row`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxrlhf.data import DataError
from jaxrlhf.tasks.length_control.data import UNFAITHFUL_PENALTY, closeness
from jaxrlhf.tasks.length_control.evaluate import iter_jsonl
from jaxrlhf.tasks.length_control.score import count_chars, fidelity, row_limit

# an answer sharing fewer of its bigrams with the source than this is ranked as unfaithful:
# between an extract's (joins and the closing 。 aside, all of them) and text from elsewhere's
FAITHFUL_MIN = 0.6


def policy_prompts_file(prompts_file: str | os.PathLike, out_file: str | os.PathLike,
                        answers_per_prompt: int) -> Path:
    """Each row of ``prompts_file`` (``{"prompt"[, "limit"]}``) ``answers_per_prompt`` times
    in a row, tagged with its group (the row number), ready for ``generate_file``."""
    if answers_per_prompt < 2:
        raise ValueError(f"answers_per_prompt must be >= 2 (a ranking needs two answers), got {answers_per_prompt}")
    src, out = Path(prompts_file), Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for line_no, row in iter_jsonl(src):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise DataError(f"{src}:{line_no}: missing field 'prompt' (a non-empty string)")
            limit = row_limit(row["prompt"], row)
            if limit is None:
                raise DataError(f"{src}:{line_no}: field 'prompt': no length limit in the prompt and no 'limit'")
            source = {"source": row["source"]} if isinstance(row.get("source"), str) else {}
            record = json.dumps({"prompt": row["prompt"], "limit": limit, "group": line_no, **source},
                                ensure_ascii=False)
            f.write((record + "\n") * answers_per_prompt)
    return out


def rank_policy_answers(samples_file: str | os.PathLike, out_file: str | os.PathLike) -> dict:
    """Rank each prompt's sampled answers (``generate_file`` output of
    :func:`policy_prompts_file`) by :func:`closeness` and write the RM rows.

    With a ``source`` in the rows, answers below FAITHFUL_MIN fidelity score closeness -
    UNFAITHFUL_PENALTY (counted as unfaithful). Empty answers and repeats of an earlier answer
    to the same prompt are dropped; a prompt
    left with fewer than two answers, or with answers all equally close, teaches no pair and
    is dropped. All of it is counted in the returned dict."""
    groups: dict[int, dict] = {}
    src = Path(samples_file)
    for line_no, row in iter_jsonl(src):
        missing = [k for k in ("group", "prompt", "limit", "response") if k not in row]
        if missing:
            raise DataError(f"{src}:{line_no}: missing field {missing[0]!r} (a generate_file output of "
                            f"policy_prompts_file rows has group, prompt, limit and response)")
        group = groups.setdefault(row["group"], {"prompt": row["prompt"], "limit": row["limit"], "answers": [],
                                                 "source": row.get("source")})
        group["answers"].append(row["response"])
    counts = {"prompts": len(groups), "answers": 0, "empty": 0, "repeated": 0, "unfaithful": 0, "rows": 0,
              "prompts_without_pair": 0}
    with Path(out_file).open("w", encoding="utf-8") as f:
        for group in groups.values():
            answers: list[str] = []
            for answer in group["answers"]:
                counts["answers"] += 1
                if count_chars(answer) == 0:
                    counts["empty"] += 1
                elif answer in answers:
                    counts["repeated"] += 1
                else:
                    answers.append(answer)
            scores = [closeness(a, group["limit"]) for a in answers]
            if isinstance(group["source"], str):
                unfaithful = [fidelity(a, group["source"]) < FAITHFUL_MIN for a in answers]
                counts["unfaithful"] += sum(unfaithful)
                scores = [round(s - UNFAITHFUL_PENALTY, 4) if bad else s for s, bad in zip(scores, unfaithful)]
            if len(set(scores)) < 2:
                counts["prompts_without_pair"] += 1
                continue
            ranked = sorted(zip(scores, answers), key=lambda sa: -sa[0])
            f.write(json.dumps({"prompt": group["prompt"], "response": [[a] for _, a in ranked],
                                "score": [s for s, _ in ranked]}, ensure_ascii=False) + "\n")
            counts["rows"] += 1
    return counts
