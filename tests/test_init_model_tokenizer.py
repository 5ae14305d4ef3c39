"""init-model saves a tokenizer that fits the model, and every stage refuses a tokenizer with
more tokens than the model has embedding rows, in one line (issue 31, defect 3)."""

import json

import pytest

from jaxrlhf.cli import main
from jaxrlhf.data.tokenizers import build_char_tokenizer
from jaxrlhf.models import load_tokenizer

from test_config import CONFIGS

WIDE = "".join(chr(0x4E00 + i) for i in range(300))  # 300 CJK characters: 560 tokens for a 512-row model


def small_arch(tmp_path, vocab_size=512):
    path = tmp_path / "arch.yaml"
    path.write_text(json.dumps({"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 32,
                                "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "max_position_embeddings": 64,
                                "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1,
                                "eos_token_id": 2}))
    return path


def init_model(tmp_path, out, *extra):
    return main(["init-model", "--config", str(CONFIGS / "init" / "llama-tiny.yaml"), "--set", f"output_dir={out}",
                 "--set", f"model.arch={small_arch(tmp_path)}", "--set", "mesh.fsdp=1", *extra])


def test_built_tokenizer_round_trips_and_renders_chats():
    tok = build_char_tokenizer()
    assert len(tok) == 360
    text = "Héllo, 世界 </s>\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids  # "</s>" in text is characters
    assert tok.decode(ids, skip_special_tokens=True) == text
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nq\n<|assistant|>\n"
    assert tok.apply_chat_template(chat, tokenize=False) == prompt + "a</s>\n"


@pytest.mark.slow
def test_init_model_saves_a_tokenizer_the_next_stage_uses(tmp_path, capsys):
    out = tmp_path / "model"
    assert init_model(tmp_path, out) == 0
    assert "360-token tokenizer" in capsys.readouterr().out
    tok = load_tokenizer(out)  # was: "no tokenizer files"
    assert len(tok) == 360 and tok.chat_template
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "say hi", "completion": " hi"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 4))
    sft = tmp_path / "sft.yaml"
    sft.write_text(f"""
output_dir: {tmp_path / 'sft'}
model: {{path: {out}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{data}], eval_fraction: 0.0, max_length: 32}}
train: {{epochs: 1, batch_size: 4, log_every: 1, eval_every: 0}}
""")
    assert main(["sft", "--config", str(sft)]) == 0
    assert (tmp_path / "sft" / "final" / "tokenizer.json").exists()


@pytest.mark.slow
def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, capsys):
    wide = tmp_path / "wide"
    build_char_tokenizer(WIDE, out_dir=wide)
    assert init_model(tmp_path, tmp_path / "m", "--tokenizer", str(wide)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the tokenizer has 560 tokens but the model of" in err
    assert "has 512 embedding rows" in err and not (tmp_path / "m").exists()

    out = tmp_path / "model"
    assert init_model(tmp_path, out) == 0
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    sft = tmp_path / "sft.yaml"
    sft.write_text(f"""
output_dir: {tmp_path / 'sft'}
tokenizer: {wide}
model: {{path: {out}}}
data: {{train_files: [{data}]}}
""")
    capsys.readouterr()
    assert main(["sft", "--config", str(sft)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{wide}: the tokenizer has 560 tokens but the model {out} has 512" in err
