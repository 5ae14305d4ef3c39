"""PNG curves of an RL run, read from its metrics.jsonl (so a resumed run plots every iteration)."""

from __future__ import annotations

import json
from pathlib import Path

CURVES = (("score", "reward (score)"), ("kl", "KL to reference"), ("policy_loss", "policy loss"),
          ("value_loss", "value loss"), ("eval_score", "held-out greedy score"))


def plot_curves(out: Path, prefix: str) -> list[Path]:
    """``{prefix}_{metric}.png`` for each curve logged (value loss only with a critic)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jsonl = out / "metrics.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.exists() else []
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("split") == prefix:
            for key, _ in CURVES:
                if key in r:
                    series.setdefault(key, {})[r["step"]] = r[key]
        elif r.get("split") == "eval" and "score" in r:
            series.setdefault("eval_score", {})[r["step"]] = r["score"]
    written = []
    for key, title in CURVES:
        if key not in series:
            continue
        xs = sorted(series[key])
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.plot(xs, [series[key][x] for x in xs], lw=1.5, marker="o" if len(xs) < 20 else None)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{prefix}_{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
