"""RL algorithms as data: advantage estimators, KL placements, loss aggregations, sample
selections and weight averaging, each a named choice (see config.AlgorithmConfig)."""

from jaxrlhf.algorithms.advantages import ADVANTAGES, AdvantageEstimator, compute_advantages, token_rewards
from jaxrlhf.algorithms.aggregation import aggregate, clipped_surrogate
from jaxrlhf.algorithms.config import AlgorithmConfig, AveragingConfig, KLConfig, SelectionConfig

__all__ = ["ADVANTAGES", "AdvantageEstimator", "AlgorithmConfig", "AveragingConfig", "KLConfig",
           "SelectionConfig", "aggregate", "clipped_surrogate", "compute_advantages", "token_rewards"]
