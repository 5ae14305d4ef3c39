"""metrics.jsonl after a resume logs each (split, step) once, also when the run is resumed at
its last step (killed after the final checkpoint, before final/ was written): the trainer
evaluates that step again, so the earlier eval row of that step is dropped first."""

import collections
import json

from jaxrlhf.loop import Position
from jaxrlhf.trainer import LoopSettings, Trainer, drop_rows_after


def _fit(out, start: Position, total: int = 4):
    settings = LoopSettings(total_steps=total, steps_per_epoch=total, log_every=1, eval_every=2,
                            save_every=0, max_nonfinite_steps=3, desc="toy")
    trainer = Trainer(settings, out=out)

    def step(state, batch):
        return state + batch, {"loss": float(state)}

    def batches(epoch, start_batch):
        yield from range(start_batch, total)

    return trainer.fit(0, step, batches, start, evaluate=lambda state: {"value": float(state)})


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resumed_at_the_last_step_logs_the_final_eval_once(tmp_path):
    _fit(tmp_path, Position())
    first = _rows(tmp_path)
    result = _fit(tmp_path, Position(epoch=1, batch=0, steps=4))  # as after a kill past the final save
    rows = _rows(tmp_path)
    counts = collections.Counter((r.get("split"), r["step"]) for r in rows)
    assert max(counts.values()) == 1, counts
    assert counts[("eval", 4)] == 1 and counts[("eval", 2)] == 1
    assert len(rows) == len(first)
    assert result.last_eval == {"value": 0.0}  # the state passed in (a real resume restores it)


def test_drop_rows_after_keeps_the_eval_at_the_step_unless_asked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "split": "train"}, {"step": 2, "split": "eval"}, {"step": 3, "split": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert drop_rows_after(path, 2) == 1
    assert [r["split"] for r in _rows(tmp_path)] == ["train", "eval"]
    assert drop_rows_after(path, 2, eval_at_step=True) == 1
    assert _rows(tmp_path) == [{"step": 2, "split": "train"}]
