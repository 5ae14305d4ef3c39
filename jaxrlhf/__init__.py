"""jaxrlhf: RLHF (SFT, ranking reward models, PPO, DPO) in JAX/Flax on a device mesh."""

__version__ = "0.1.0"
