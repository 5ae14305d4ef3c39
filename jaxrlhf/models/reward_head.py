"""A reward model's normalisation where a transformers user meets it.

Training reads raw rewards from the score head; the RM stage then measures a gain and bias that
give the eval set's rewards mean 0 and std 1, and PPO (``normalize: true``) scores with
``gain * raw + bias``. An export folds the gain into ``score.weight``, so
``AutoModelForSequenceClassification`` outputs ``gain * raw``. The bias cannot be folded:
transformers' ``score`` layer is ``nn.Linear(hidden, 1, bias=False)`` in every architecture we
port, and no other weight adds a constant to one output. It is recorded in config.json
(``reward_normalization: {gain, bias}``): the normalised reward is ``logits[:, 0] + bias``.

The raw head is kept beside the weights (``HEAD_FILE``: ``score.weight`` [1, E] float32 and
``normalization`` [gain, bias]), so our loader restores it bit for bit; dividing by the gain
would not round-trip in float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HEAD_FILE = "jaxrlhf_reward_head.safetensors"
LAYOUT_KEY = "reward_layout"  # {"append_eos": bool}: how the RM laid out its training sequences
CONFIG_KEY = "reward_normalization"  # {"gain": g, "bias": b} in config.json; the gain is folded into score.weight
LEGACY_KEY = "jaxrlhf_reward_normalization"  # [gain, bias], head not folded (exports before the fold)


def fold_gain(raw_score: np.ndarray, gain: float) -> np.ndarray:
    """``score.weight`` as exported: the raw head times the gain, computed in float32."""
    return np.asarray(raw_score, np.float32) * np.float32(gain)


def export_head(raw_score: np.ndarray, normalization: np.ndarray, dtype) -> tuple[np.ndarray, dict, dict]:
    """``(score.weight to export [1, E], config.json entries, the raw head file's tensors)``."""
    raw = np.asarray(raw_score, np.float32).reshape(1, -1)
    gain, bias = (float(x) for x in np.asarray(normalization, np.float32))
    folded = fold_gain(raw, gain).astype(dtype)
    head = {"score.weight": raw, "normalization": np.asarray([gain, bias], np.float32)}
    return folded, {CONFIG_KEY: {"gain": gain, "bias": bias}}, head


def _normalization(hf_config: dict, where: str) -> tuple[float, float]:
    value = hf_config[CONFIG_KEY]
    try:
        gain, bias = float(value["gain"]), float(value["bias"])
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"{where}: {CONFIG_KEY} must be {{\"gain\": number, \"bias\": number}}, "
                         f"got {value!r}") from None
    if not (math.isfinite(gain) and math.isfinite(bias)) or gain == 0:
        raise ValueError(f"{where}: {CONFIG_KEY} needs a finite, non-zero gain and a finite bias, got {value!r}")
    return gain, bias


def read_head(folder: str | Path, hf_config: dict, stored_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(raw score head [E] float32, [gain, bias] float32)`` of a sequence-classification folder.

    stored_score: ``score.weight`` [1, E] as the folder's weights hold it. Our export: the raw head
    from ``HEAD_FILE``, checked against the folded weight (a head trained further elsewhere and saved
    over the weights would no longer match: refused, naming both files); without ``HEAD_FILE`` the
    folded weight divided by the gain. A folder with no normalisation: the head as stored, gain 1,
    bias 0. Raises ValueError with one line naming the file.
    """
    folder = Path(folder)
    stored = np.asarray(stored_score)
    if CONFIG_KEY in hf_config:
        gain, bias = _normalization(hf_config, str(folder / "config.json"))
        head_file = folder / HEAD_FILE
        if head_file.exists():
            from safetensors.numpy import load_file
            try:
                raw = load_file(head_file)["score.weight"]
            except Exception as e:  # safetensors raises its own types for a damaged file
                raise ValueError(f"{head_file}: cannot be read ({type(e).__name__}: {e})") from None
            if raw.shape != stored.shape or not np.array_equal(fold_gain(raw, gain).astype(stored.dtype), stored):
                raise ValueError(f"{folder}: score.weight is not the gain {gain} times the raw head in {HEAD_FILE} "
                                 f"(trained further elsewhere?): remove {HEAD_FILE} to read score.weight / gain")
        else:
            raw = stored.astype(np.float32) / np.float32(gain)
        return raw.reshape(-1).astype(np.float32), np.asarray([gain, bias], np.float32)
    if LEGACY_KEY in hf_config:
        return stored.reshape(-1).astype(np.float32), np.asarray(hf_config[LEGACY_KEY], np.float32)
    return stored.reshape(-1).astype(np.float32), np.asarray([1.0, 0.0], np.float32)
