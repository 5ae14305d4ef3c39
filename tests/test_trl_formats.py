"""Every trl dataset format loads in the loader that uses it (issue 31, defect 9): standard
and conversational prompt-only, prompt-completion, preference with and without a prompt
column, and unpaired preference (loaded on its own, refused by the stages with one line)."""

import json

import pytest

from char_tokenizers import BOS, CHAT, char_tokenizer
from jaxrlhf.data import DataError, load_preference_data, load_sft_data
from jaxrlhf.data.formats import row_format
from jaxrlhf.data.unpaired import load_unpaired_preference
from jaxrlhf.data.prompts import load_prompts, tokenize_prompts


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer(chat_template=CHAT)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


ROWS = {  # trl's examples of each format, reduced to the char tokenizer's alphabet
    "standard language modeling": {"text": "the sky is blue."},
    "conversational language modeling": {"messages": [user("what color is the sky?"), bot("blue.")]},
    "standard prompt-only": {"prompt": "the sky is"},
    "conversational prompt-only": {"prompt": [user("what color is the sky?")]},
    "standard prompt-completion": {"prompt": "the sky is", "completion": " blue."},
    "conversational prompt-completion": {"prompt": [user("what color is the sky?")],
                                         "completion": [bot("it is blue.")]},
    "standard preference": {"prompt": "the sky is", "chosen": " blue.", "rejected": " green."},
    "conversational preference": {"prompt": [user("what color is the sky?")], "chosen": [bot("blue.")],
                                  "rejected": [bot("green.")]},
    "standard unpaired preference": {"prompt": "the sky is", "completion": " blue.", "label": True},
    "conversational unpaired preference": {"prompt": [user("what color is the sky?")],
                                           "completion": [bot("green.")], "label": False},
}


def test_row_format_names_every_trl_format():
    assert {name: row_format(row) for name, row in ROWS.items()} == {name: name for name in ROWS}
    implicit = {"chosen": "the sky is blue.", "rejected": "the sky is green."}
    assert row_format(implicit) == "standard preference"


def test_prompt_only_rows_standard_and_conversational(tmp_path, tok):
    names = ["standard prompt-only", "conversational prompt-only", "standard prompt-completion",
             "conversational prompt-completion"]
    path = write_jsonl(tmp_path / "prompts.jsonl", [ROWS[n] for n in names])
    examples, report = load_prompts(path, tokenizer=tok, strict=True)
    # the template's BOS string is dropped: the tokenizer adds BOS, as for SFT's messages rows
    assert [e.prompt for e in examples] == [
        "the sky is", "<user>what color is the sky?<assistant>",
        "the sky is", "<user>what color is the sky?<assistant>"]
    assert report.kept == 4
    arrays = tokenize_prompts(examples, tok, max_length=48)
    assert (arrays.input_ids == BOS).sum(axis=1).tolist() == [1, 1, 1, 1]  # one BOS per prompt, not two


def test_sft_prompt_completion_standard_and_conversational(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [ROWS["standard prompt-completion"],
                                               ROWS["conversational prompt-completion"]])
    examples, _ = load_sft_data(path, tokenizer=tok, strict=True)
    # BOS dropped (the tokenizer adds it) and EOS dropped (appended as a token), as for messages rows
    assert [(e.prompt, e.response) for e in examples] == [
        ("the sky is", " blue."), ("<user>what color is the sky?<assistant>", "it is blue.")]
    messages, _ = load_sft_data(write_jsonl(tmp_path / "m.jsonl", [
        {"messages": ROWS["conversational prompt-completion"]["prompt"]
         + ROWS["conversational prompt-completion"]["completion"]}]), tokenizer=tok)
    assert (messages[0].prompt, messages[0].response) == (examples[1].prompt, examples[1].response)
    with pytest.raises(DataError, match=r"sft\.jsonl:2: conversational rows .* chat template"):
        load_sft_data(path, tokenizer=char_tokenizer())
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [user("q")], "completion": "a"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: bad response type \(field 'completion'\)"):
        load_sft_data(bad, tokenizer=tok, strict=True)


def test_preference_with_and_without_prompt(tmp_path, tok):
    path = write_jsonl(tmp_path / "pref.jsonl", [
        ROWS["standard preference"],
        {"chosen": "the sky is blue.", "rejected": "the sky is green."},  # implicit prompt
        ROWS["conversational preference"],
        {"chosen": [user("sky?"), bot("blue.")], "rejected": [user("sky?"), bot("green.")]},
    ])
    examples, _ = load_preference_data(path, tokenizer=tok, strict=True)
    assert [(e.prompt, e.responses) for e in examples] == [
        ("the sky is", (" blue.", " green.")),
        ("the sky is", (" blue.", " green.")),  # trl's extract_prompt: the space goes with the answers
        ("<user>what color is the sky?<assistant>", ("blue.", "green.")),
        ("<user>sky?<assistant>", ("blue.", "green."))]
    nothing_shared = write_jsonl(tmp_path / "apart.jsonl", [{"chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError, match=r"apart\.jsonl:1: missing prompt \(field 'prompt'\): no prompt column"):
        load_preference_data(nothing_shared, strict=True)


def test_unpaired_preference_loads_and_stages_refuse_it(tmp_path, tok):
    path = write_jsonl(tmp_path / "kto.jsonl", [ROWS["standard unpaired preference"],
                                               ROWS["conversational unpaired preference"]])
    examples, report = load_unpaired_preference(path, tokenizer=tok, strict=True)
    assert [(e.prompt, e.completion, e.label, e.line) for e in examples] == [
        ("the sky is", " blue.", True, 1), ("<user>what color is the sky?<assistant>", "green.", False, 2)]
    assert report.kept == 2
    for load, stage in ((load_sft_data, "SFT"), (load_preference_data, "a preference stage")):
        with pytest.raises(DataError, match=rf"kto\.jsonl:1: unpaired preference row .*: {stage}"):
            load(path, tokenizer=tok)
    bad = write_jsonl(tmp_path / "label.jsonl", [{"prompt": "p", "completion": "c", "label": "yes"}])
    with pytest.raises(DataError, match=r"label\.jsonl:1: non-numeric score \(field 'label'\): expected true"):
        load_unpaired_preference(bad, strict=True)
