"""The demo's report: the seed-style score table with fidelity, the score per test part
(in distribution, held-out source), the fidelity per score band, examples, RM figures,
curves, timings."""

from __future__ import annotations

import json
from pathlib import Path

LEVELS = ("1.0", "0.9", "0.8", "0.7", "0.6", "0.0")
NAMES = {"sft": "SFT", "dpo": "DPO", "ppo": "RLHF (PPO + learned RM)"}
SEED = {"sft": 0.633, "dpo": 0.749, "ppo": 0.824}
PARTS = {"in_distribution": "in distribution", "held_out": "held-out source"}


def _metrics(path: Path, split: str) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == split]


def plot_losses(run_dir: Path, out_png: Path, title: str) -> Path | None:
    """Train and eval loss over steps from a run's metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, eval_ = _metrics(run_dir / "metrics.jsonl", "train"), _metrics(run_dir / "metrics.jsonl", "eval")
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1.2)
    if eval_:
        ax.plot([r["step"] for r in eval_], [r["loss"] for r in eval_], "o-", label="eval", lw=1.2)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _cell(text: str, limit: int = 60) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _score_tables(evals: dict) -> list[str]:
    """The seed-style table (mean score, mean fidelity, answers per score level), the per-part
    table when the test split has parts, and the mean fidelity per score band."""
    n = evals["sft"]["rows"]
    lines = [f"Mean length score and fidelity on the test split ({n} prompts, greedy decoding), with the "
             "number of answers at each score level. Fidelity: the share of an answer's character bigrams "
             "found in its source paragraph (1 = copied from it, 0 = none of it):", "",
             "| model | mean score | mean fidelity | " + " | ".join(LEVELS) + " | seed's result |",
             "|---|---|---|" + "---|" * len(LEVELS) + "---|"]
    for key in ("sft", "dpo", "ppo"):
        e = evals[key]
        dist = " | ".join(str(e["distribution"].get(level, 0)) for level in LEVELS)
        lines.append(f"| {NAMES[key]} | **{e['mean_score']:.3f}** | {_num(e.get('mean_fidelity'))} | {dist} | "
                     f"{SEED[key]:.3f} |")
    parts = list(evals["sft"].get("parts", {}))
    if parts:
        counts = ", ".join(f"{PARTS.get(p, p)} {evals['sft']['parts'][p]['rows']}" for p in parts)
        lines += ["", f"By part of the test split ({counts} prompts; the held-out source is text no "
                      "training file drew from):", "",
                  "| model | " + " | ".join(f"{PARTS.get(p, p)} score | {PARTS.get(p, p)} fidelity" for p in parts)
                  + " |", "|---|" + "---|---|" * len(parts)]
        for key in ("sft", "dpo", "ppo"):
            cells = " | ".join(f"**{_num(evals[key]['parts'][p]['mean_score'])}** | "
                               f"{_num(evals[key]['parts'][p]['mean_fidelity'])}" for p in parts)
            lines.append(f"| {NAMES[key]} | {cells} |")
    if "fidelity_by_level" in evals["sft"]:
        lines += ["", "Mean fidelity of the answers in each score band (all test rows; - where none):", "",
                  "| model | " + " | ".join(LEVELS) + " |", "|---|" + "---|" * len(LEVELS)]
        for key in ("sft", "dpo", "ppo"):
            band = evals[key].get("fidelity_by_level", {})
            lines.append(f"| {NAMES[key]} | " + " | ".join(_num(band.get(level)) for level in LEVELS) + " |")
    return lines


LIMIT_BANDS = ((5, 12), (13, 25), (26, 45), (46, 65), (66, 80))


def _limit_band_table(predictions: dict[str, list[dict]]) -> list[str]:
    """Mean score / mean fidelity (median length / limit) of each model's answers per limit band:
    where the limit is short, one character is 10-20% of it."""
    lines = ["By limit band: mean score / mean fidelity (median length / limit):", "",
             "| model | " + " | ".join(f"{lo}-{hi}" for lo, hi in LIMIT_BANDS) + " |", "|---|" + "---|" * len(LIMIT_BANDS)]
    for key in ("sft", "dpo", "ppo"):
        cells = []
        for lo, hi in LIMIT_BANDS:
            rows = [r for r in predictions.get(key, []) if r.get("score") is not None and lo <= r["limit"] <= hi]
            if not rows:
                cells.append("-")
                continue
            ratio = sorted(r["chars"] / r["limit"] for r in rows)[len(rows) // 2]
            cells.append(f"{sum(r['score'] for r in rows) / len(rows):.2f} / "
                         f"{sum(r.get('fidelity', 0.0) for r in rows) / len(rows):.2f} (x{ratio:.2f})")
        lines.append(f"| {NAMES[key]} | " + " | ".join(cells) + " |")
    return lines + [""]


def _example_rows(rows: list[dict], n: int = 8) -> list[int]:
    """Indices of ``n`` examples: the first rows of each part in turn (all in-distribution rows
    come first in the test file, so the held-out ones would never show)."""
    by_part: dict = {}
    for i, row in enumerate(rows):
        by_part.setdefault(row.get("part"), []).append(i)
    picked: list[int] = []
    while len(picked) < min(n, len(rows)):
        for indices in by_part.values():
            if indices and len(picked) < n:
                picked.append(indices.pop(0))
    return picked


def write_report(out: Path, *, evals: dict, results: dict, timings: dict) -> Path:
    out = Path(out)
    lines = ["# Length-controlled summarisation: SFT vs DPO vs RLHF", ""]
    lines += _score_tables(evals)
    rm_eval = (results.get("rm") or {}).get("eval", {})
    rm_train = _metrics(out / "rm" / "metrics.jsonl", "train")
    sft_eval = (results.get("sft") or {}).get("eval", {})
    nan = float("nan")
    rm_sentence = ("Reward model (ranked drafts per prompt, K-wise ranking loss): "
                   + (f"train loss {rm_train[-1]['loss']:.4f}, " if rm_train else "")
                   + f"eval loss {rm_eval.get('loss', nan):.4f}, eval pairwise accuracy "
                   f"{rm_eval.get('pair_accuracy', nan):.3f}, top-1 accuracy {rm_eval.get('top1_accuracy', nan):.3f}. "
                   f"SFT eval loss {sft_eval.get('loss', nan):.4f} (perplexity {sft_eval.get('perplexity', nan):.2f}).")
    lines += ["", rm_sentence, ""]

    predictions = {k: [json.loads(l) for l in (out / "eval" / f"{k}.jsonl").read_text(encoding="utf-8").splitlines()]
                   for k in ("sft", "dpo", "ppo") if (out / "eval" / f"{k}.jsonl").exists()}
    if predictions:
        lines += _limit_band_table(predictions)
        lines += ["## Examples", "", "| part | prompt | limit | SFT | DPO | RLHF |", "|---|---|---|---|---|---|"]
        for i in _example_rows(predictions.get("sft", [])):
            row = predictions["sft"][i]
            answers = []
            for key in ("sft", "dpo", "ppo"):
                p = predictions.get(key, [{}] * (i + 1))[i]
                answers.append(f"{_cell(p.get('response', ''), 40)} ({p.get('chars', '?')} chars, "
                               f"score {p.get('score')}, fidelity {p.get('fidelity')})")
            part = PARTS.get(row.get("part"), row.get("part") or "")
            lines.append(f"| {part} | {_cell(row['prompt'])} | {row.get('limit')} | " + " | ".join(answers) + " |")
        lines.append("")

    curves = []
    for run, title, png in (("sft", "SFT loss", "sft_loss.png"), ("rm", "reward model loss", "rm_loss.png")):
        if plot_losses(out / run, out / png, title):
            curves.append(f"![{title}]({png})")
    for name in ("score", "kl", "policy_loss", "value_loss"):
        if (out / "ppo" / f"ppo_{name}.png").exists():
            curves.append(f"![PPO {name.replace('_', ' ')}](ppo/ppo_{name}.png)")
    if curves:
        lines += ["## Curves", ""] + curves + [""]
    lines += ["## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
