"""Tiny random transformers models, saved to a folder, for parity tests (no network)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 97


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                  rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def tiny_qwen2_config(**overrides) -> transformers.Qwen2Config:
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    return transformers.Qwen2Config(**kwargs)


def tiny_gpt2_config(**overrides) -> transformers.GPT2Config:
    kwargs = dict(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    return transformers.GPT2Config(**kwargs)


def build_hf_model(config, folder, seed: int = 0):
    """Random-init a transformers causal LM, perturb norms/biases (so a layout bug cannot hide
    behind ones and zeros), save it as safetensors and return the eval-mode torch model."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(folder)
    return model


def left_padded_batch(seed: int = 0, lengths=(12, 7, 3), total: int = 12, vocab: int = VOCAB):
    """input_ids [B, T] with left padding (pad id 0) and the matching 0/1 mask."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for row, n in enumerate(lengths):
        ids[row, total - n:] = rng.integers(3, vocab, size=n)
        mask[row, total - n:] = 1
    return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' logits with positions derived from the mask, as generate() does."""
    ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions)
    return out.logits.float().numpy()


def tiny_qwen3_config(**overrides) -> transformers.Qwen3Config:
    """head_dim 24 != hidden / heads (64 / 4), as in real Qwen3 checkpoints."""
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                  max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    return transformers.Qwen3Config(**kwargs)


def tiny_gemma3_config(**overrides) -> transformers.Gemma3TextConfig:
    """Four layers: sliding, full, sliding, full with window 8, and the two RoPE bases far apart."""
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, rms_norm_eps=1e-6, query_pre_attn_scalar=24,
                  sliding_window=8,
                  layer_types=["sliding_attention", "full_attention"] * 2,
                  rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                   "full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
                  attn_implementation="eager")
    kwargs.update(overrides)
    return transformers.Gemma3TextConfig(**kwargs)


def build_hf_gemma3_image_text_model(folder, seed: int = 0, **text_overrides):
    """A tiny ``Gemma3ForConditionalGeneration`` (SigLIP vision tower + the tiny Gemma 3 text
    tower), norms perturbed, saved as safetensors; returns the eval-mode torch model."""
    text = tiny_gemma3_config(**text_overrides)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                       mm_tokens_per_image=4, image_token_index=VOCAB - 1,
                                       boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2)
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model
