"""Rule reward functions the RL tests name in their configs (``rl_rewards:NAME``; tests/ is on
sys.path through conftest)."""

import numpy as np

_calls = {"n": 0}


def nan_after_two_calls(batch):
    """Finite scores for two batches, then NaN for every answer."""
    _calls["n"] += 1
    value = 0.5 if _calls["n"] <= 2 else float("nan")
    return np.full(len(batch.responses), value, np.float32)


def wrong_shape(batch):
    return np.zeros(3, np.float32)
