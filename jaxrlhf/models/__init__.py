"""Model ports and their Hugging Face folder I/O.

``from_pretrained(path)`` reads a local HF folder (config.json + safetensors) into our NNX
module, sharded over a mesh as it loads; ``save_pretrained(model, path)`` writes a folder
that transformers loads (``AutoModelForCausalLM``, or ``AutoModelForSequenceClassification``
for a reward model).
"""

from jaxrlhf.models.base import ArchConfig, CausalLM, CausalLMOutput
from jaxrlhf.models.gemma3 import Gemma3Config, Gemma3ForCausalLM
from jaxrlhf.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxrlhf.models.heads import RewardModel, ScalarHeadModel
from jaxrlhf.models.hf import CheckpointError
from jaxrlhf.models.io import (ARCHITECTURES, config_from_hf, create_model, create_reward_model,
                               from_pretrained, load_tokenizer, read_config,
                               reward_model_from_pretrained, save_pretrained)
from jaxrlhf.models.layers import KVCache
from jaxrlhf.models.llama import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen3Config

__all__ = ["ARCHITECTURES", "ArchConfig", "CausalLM", "CausalLMOutput", "CheckpointError",
           "Gemma3Config", "Gemma3ForCausalLM", "GPT2Config", "GPT2LMHeadModel", "KVCache",
           "LlamaConfig", "LlamaForCausalLM", "Qwen2Config", "Qwen3Config", "RewardModel",
           "ScalarHeadModel", "config_from_hf", "create_model", "create_reward_model",
           "from_pretrained", "load_tokenizer", "read_config", "reward_model_from_pretrained",
           "save_pretrained"]
