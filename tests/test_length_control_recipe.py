"""The length-control demo's real-model recipe (configs/length_control/gemma3-270m-lora.yaml):
its stage configs, and (slow) the whole pipeline at smoke size from a tiny random Gemma 3 with
its own subword tokenizer, both built here (no network), in place of the 270M weights."""

import json
import math
from pathlib import Path

import pytest

from jaxrlhf.cli import main
from jaxrlhf.tasks.length_control.pipeline import load_demo_config, stage_configs

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "length_control" / "gemma3-270m-lora.yaml"
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3 in Gemma's order: pad 0, eos 1, bos 2, unk 3
DATA_FILES = ("sft", "rm", "dpo", "ppo_prompts", "test", "rm_policy_prompts")


def test_recipe_gives_every_stage_lora_on_a_bf16_base_and_sft_the_pretrained_folder(tmp_path):
    cfg = load_demo_config(RECIPE, [f"output_dir={tmp_path}"])
    configs = stage_configs(cfg, tmp_path, {name: tmp_path / f"{name}.jsonl" for name in DATA_FILES})
    assert configs["sft"].model.path == cfg.pretrained and configs["sft"].tokenizer == cfg.pretrained
    for name, stage in configs.items():
        model = stage.model
        assert (model.dtype, model.param_dtype) == ("bfloat16", "bfloat16"), name
        assert model.lora is not None and model.lora.rank == 16 and model.lora.all_linear, name
        assert model.logits == "chunked", name  # Gemma's 262k vocabulary
        if name != "sft":  # RM, DPO and PPO start from the merged SFT model
            assert model.path == str(tmp_path / "sft" / "final"), name
    # the reference of DPO and PPO is their own base with the adapters at zero: no second model
    assert configs["dpo"].reference_path is None and configs["ppo"].reference_path is None
    assert configs["sft"].data.train_on_prompt is False
    # a stage's own section still wins over every_stage
    cfg = load_demo_config(RECIPE, [f"output_dir={tmp_path}", "rm.model.lora.rank=4"])
    configs = stage_configs(cfg, tmp_path, {name: tmp_path / f"{name}.jsonl" for name in DATA_FILES})
    assert configs["rm"].model.lora.rank == 4 and configs["sft"].model.lora.rank == 16


def test_recipe_without_its_model_folder_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-model"
    assert main(["demo", "--config", str(RECIPE), "--out", str(tmp_path / "run"),
                 "--set", f"pretrained={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pretrained: {missing}" in err and "convert gguf" in err
    assert not (tmp_path / "run").exists()  # refused before any data or stage ran


def build_bpe_tokenizer(texts: list[str], folder: Path, vocab_size: int = 6000):
    """A Gemma-like tokenizer (pad 0, eos 1, bos 2, unk 3, BOS prepended) whose BPE merges are
    learned on ``texts``, with byte fallback so every string encodes: several characters per
    token where the data repeats them, as a real subword tokenizer spends them."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    split = pre_tokenizers.Punctuation(behavior="isolated")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = split
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(f"<0x{b:02X}>" for b in range(256)))}
    for tok, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    raw = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = split
    raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="right", clean_up_tokenization_spaces=False, split_special_tokens=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def data_texts(folder: Path) -> list[str]:
    texts = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [v for v in row.values() if isinstance(v, str)]
            texts += [a[0] if isinstance(a, list) else a for a in row.get("response", []) if isinstance(row.get("response"), list)]
    return texts


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny random Gemma 3 text model + its BPE tokenizer as one HF folder (the stand-in
    for the converted 270M), the tokenizer learned on the task's own data and embedded text
    (vocab_size above the ~3300 distinct characters, so that merges are learned)."""
    from hf_models import build_hf_model, tiny_gemma3_config

    from jaxrlhf.tasks.length_control.corpus import embedded_text

    data = tmp_path_factory.mktemp("lc-data")
    assert main(["data", "length-control", "--out", str(data), "--n-sft", "200", "--n-rm", "40",
                 "--n-test", "16", "--n-ppo-prompts", "40"]) == 0
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tokenizer = build_bpe_tokenizer(data_texts(data) + list(embedded_text()), folder)
    build_hf_model(tiny_gemma3_config(vocab_size=len(tokenizer), max_position_embeddings=512,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=2), folder)
    return folder, tokenizer


@pytest.mark.slow
def test_recipe_smoke_runs_every_stage_from_the_pretrained_folder(pretrained, tmp_path, capsys):
    folder, tokenizer = pretrained
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    out = tmp_path / "run"
    assert main(["demo", "--config", str(RECIPE), "--size", "smoke", "--out", str(out),
                 "--set", f"pretrained={folder}"]) == 0
    assert "demo finished" in capsys.readouterr().out
    assert not (out / "base").exists()  # no char tokenizer, no model from scratch
    prompts = [json.loads(line)["prompt"] for line in (out / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens = sum(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    assert tokens < 0.8 * sum(map(len, prompts))  # subwords: fewer tokens than characters
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (out / stage / "results.json").exists(), stage
        assert (out / stage / "final" / "adapter" / "adapter_model.safetensors").exists(), stage
        adapter = json.loads((out / stage / "final" / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == 16, stage
        # every stage read the pretrained model's own tokenizer
        saved = json.loads((out / stage / "final" / "tokenizer.json").read_text())["model"]["vocab"]
        assert saved == vocab, stage
    assert f"path: {folder}" in (out / "sft" / "config.yaml").read_text()
    scores = {}
    for model in ("sft", "dpo", "ppo"):
        summary = json.loads((out / "eval" / f"{model}.json").read_text())
        scores[model] = summary["mean_score"]
        assert summary["scored_rows"] == len(prompts) and math.isfinite(summary["mean_score"]), model
        rows = [json.loads(l) for l in (out / "eval" / f"{model}.jsonl").read_text().splitlines()]
        assert len(rows) == len(prompts) and all(isinstance(r["response"], str) for r in rows)
    report = (out / "report.md").read_text()
    for needle in ("| SFT |", "| DPO |", "| RLHF (PPO + learned RM) |", "Reward model"):
        assert needle in report, needle
    assert all(0.0 <= s <= 1.0 for s in scores.values()), scores
