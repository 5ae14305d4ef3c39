"""``jaxrlhf generate`` writes one output row per input row, or stops naming the row it cannot
render (issue 31, defect 5: a ``messages`` row was dropped without a word)."""

import json

import pytest

from char_tokenizers import CHAT
from jaxrlhf.cli import main
from rm_fixtures import tiny_model_folder, write_jsonl

ROWS = [{"prompt": "q: abc", "limit": 3},
        {"messages": [{"role": "user", "content": "what is it?"}]},
        {"prompt": [{"role": "user", "content": "say a"}]}]  # trl's conversational prompt-only


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two folders of the same tiny model: its tokenizer with a chat template, and without."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("generate")
    plain = tiny_model_folder(root / "plain")
    chat = tiny_model_folder(root / "chat")
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = CHAT
    tok.save_pretrained(chat)
    return plain, chat


def generate(model, prompts, out):
    return main(["generate", str(model), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "4",
                 "--batch-size", "2", "--mesh", "data=1,fsdp=1,tensor=1"])


def test_every_row_is_written_in_order(models, tmp_path, capsys):
    prompts = write_jsonl(ROWS, tmp_path / "p.jsonl")
    out = tmp_path / "out.jsonl"
    assert generate(models[1], prompts, out) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["prompt"] for w in written] == ["q: abc", "<s><user>what is it?<assistant>",
                                              "<s><user>say a<assistant>"]
    assert written[0]["limit"] == 3 and "messages" not in written[1]
    assert "wrote 3 rows" in capsys.readouterr().out


def test_a_row_it_cannot_render_stops_with_file_and_line(models, tmp_path, capsys):
    prompts = write_jsonl(ROWS, tmp_path / "p.jsonl")
    out = tmp_path / "out.jsonl"
    assert generate(models[0], prompts, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("p.jsonl:2: chat template mismatch (field 'messages'): message rows need a tokenizer "
                        "with a chat template") and "\n" not in err
    assert not out.exists()
