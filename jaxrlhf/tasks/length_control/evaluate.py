"""Evaluate length control as the seed does: greedy answers to the test prompts, the mean
rule score and how the answers spread over the six score levels, with each answer's
fidelity to its source paragraph (:func:`~jaxrlhf.tasks.length_control.score.fidelity`)
beside it: the right length is only half of a summary. A test file whose rows carry a
``part`` field (the demo's ``in_distribution`` and ``held_out``) is also summarised per part.

Rows whose limit is unknown (no ``limit`` field and none in the prompt) are kept in the
output with ``score: null`` and counted in ``no_limit_rows``, never silently dropped, so
a bad test file shows up in the report instead of inflating the mean.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from jaxrlhf.data import DataError

from jaxrlhf.tasks.length_control.score import (SCORE_LEVELS, count_chars, fidelity, row_limit, row_source,
                                                 score_count)

MAX_NEW_TOKENS_CAP = 200


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line; a line that is not a JSON object is a
    :class:`~jaxrlhf.data.DataError` naming the file and line."""
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def score_rows(rows: list[dict]) -> list[dict]:
    """Each row plus ``limit`` (field or parsed), ``chars`` (count_chars of the response),
    ``score`` (null when the limit is unknown) and ``fidelity`` (to the row's ``source``, else
    to its prompt)."""
    out = []
    for row in rows:
        prompt, response = str(row.get("prompt", "")), str(row.get("response", ""))
        limit = row_limit(prompt, row)
        chars = count_chars(response)
        out.append({**row, "limit": limit, "chars": chars,
                    "score": None if limit is None else score_count(chars, limit),
                    "fidelity": round(fidelity(response, row_source(prompt, row)), 4)})
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _summary(scored: list[dict]) -> dict:
    values = [r["score"] for r in scored if r["score"] is not None]
    return {"mean_score": _mean(values), "mean_fidelity": _mean([r["fidelity"] for r in scored]),
            "rows": len(scored), "scored_rows": len(values),
            "distribution": {str(level): values.count(level) for level in SCORE_LEVELS},
            # the mean fidelity of the answers at each score level (null where none)
            "fidelity_by_level": {str(level): _mean([r["fidelity"] for r in scored if r["score"] == level])
                                  for level in SCORE_LEVELS},
            "no_limit_rows": len(scored) - len(values)}


def summarize(scored: list[dict]) -> dict:
    """Mean score over rows with a limit, mean fidelity over all rows, the per-level counts
    and fidelity, the rows without a limit; and the same per ``part`` under ``parts`` when
    the rows name parts."""
    result = _summary(scored)
    parts = list(dict.fromkeys(r["part"] for r in scored if r.get("part") is not None))
    if parts:
        result["parts"] = {part: _summary([r for r in scored if r.get("part") == part]) for part in parts}
    return result


def evaluate_predictions(predictions_file: str | os.PathLike, out_file: str | os.PathLike | None = None) -> dict:
    """Score a JSONL file of ``{"prompt", "response", ["limit"]}`` rows; with ``out_file`` the
    rows are written there with ``limit``/``chars``/``score`` added."""
    scored = score_rows(read_jsonl(predictions_file))
    if out_file is not None:
        Path(out_file).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored),
                                  encoding="utf-8")
    return summarize(scored)


def default_max_new_tokens(data_file: str | os.PathLike) -> int:
    """Room for twice the largest limit in the file plus 8 (a char tokenizer spends a token per
    character; overshooting must stay visible), capped to keep decoding cheap."""
    limits = [row_limit(str(r.get("prompt", "")), r) for r in read_jsonl(data_file)]
    limits = [n for n in limits if n is not None]
    return min(2 * max(limits) + 8, MAX_NEW_TOKENS_CAP) if limits else MAX_NEW_TOKENS_CAP


def evaluate_length_control(model_dir: str | os.PathLike, data_file: str | os.PathLike,
                            out_file: str | os.PathLike, *, batch_size: int = 32, max_new_tokens: int | None = None,
                            max_prompt_length: int = 384, mesh=None) -> dict:
    """Greedy-decode ``data_file``'s prompts with the model in ``model_dir``, score every row and
    rewrite ``out_file`` with the scores; returns :func:`summarize`'s dict plus the decoding
    report under ``"generation"``."""
    from jaxrlhf.generate import SamplingConfig
    from jaxrlhf.stages.sample import generate_file

    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(data_file)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    generation = generate_file(str(model_dir), str(data_file), str(out_file), config=config,
                               batch_size=batch_size, max_prompt_length=max_prompt_length, mesh=mesh)
    result = evaluate_predictions(out_file, out_file)
    return {**result, "max_new_tokens": max_new_tokens, "generation": generation}


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.3f}" if value is not None else " " * (width - 1) + "-"


def format_distribution(result: dict) -> str:
    """The six score levels as a small table (rows, share and the answers' mean fidelity),
    with the mean score and fidelity, the rows that had no limit, and a line per part."""
    scored = result.get("scored_rows") or 0
    lines = ["score  rows  share  fidelity", "-----  ----  -----  --------"]
    for level in SCORE_LEVELS:
        n = result["distribution"].get(str(level), 0)
        share = f"{100 * n / scored:5.1f}%" if scored else "    -"
        lines.append(f"{level:5.1f}  {n:4d}  {share}  {_fmt(result.get('fidelity_by_level', {}).get(str(level)))}")
    mean = result.get("mean_score")
    lines.append(f"mean score {mean:.3f} over {scored} rows" if mean is not None else "mean score - (no scored rows)")
    if result.get("mean_fidelity") is not None:
        lines.append(f"mean fidelity {result['mean_fidelity']:.3f} over {result['rows']} rows")
    if result.get("no_limit_rows"):
        lines.append(f"{result['no_limit_rows']} rows without a limit (not scored)")
    for part, summary in result.get("parts", {}).items():
        lines.append(f"{part}: mean score {_fmt(summary['mean_score'], 5)}, mean fidelity "
                     f"{_fmt(summary['mean_fidelity'], 5)} over {summary['rows']} rows")
    return "\n".join(lines)
