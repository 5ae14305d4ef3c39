"""Preference data: every format and skip reason, strict messages, the truncation layout, batching."""

import collections
import json
from types import SimpleNamespace

import numpy as np
import pytest

from char_tokenizers import BAD_CHAT, BOS, CHAT, EOS, PAD, VOCAB, char_tokenizer
from jaxrlhf.data import (SKIP_REASONS, CleanReport, DataError, RankedArrays, RankedExample,
                          batches_per_epoch, epoch_order, iterate_batches, load_preference_data,
                          pad_id_of, split_train_eval, tokenize_ranked)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def ids(text):
    return [VOCAB[c] for c in text]


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def as_tuples(examples):
    return [(e.prompt, e.responses, e.scores, e.line) for e in examples]


# --------------------------------------------------------------------------- formats


def test_ranked_jsonl_with_string_and_list_responses_and_aliases(tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", [
        {"prompt": "p1", "response": [["a"], ["b"], "c"], "score": [3, 2, 1]},
        "",  # blank lines are ignored but still numbered
        {"prompt": "p2", "responses": ["x", "y"], "scores": [0.5, 2]},
    ])
    examples, report = load_preference_data(path)
    assert as_tuples(examples) == [("p1", ("a", "b", "c"), (3.0, 2.0, 1.0), 1),
                                   ("p2", ("x", "y"), (0.5, 2.0), 3)]
    assert examples[0] == RankedExample("p1", ("a", "b", "c"), (3.0, 2.0, 1.0), path, 1)
    assert (report.total, report.kept, report.skipped) == (2, 2, collections.Counter())
    assert report.summary() == "kept 2 of 2 rows"


def test_json_array_and_json_with_jsonl_content(tmp_path):
    rows = [{"prompt": "p1", "response": [["a"], ["b"]], "score": [1, 0]},
            {"prompt": "p2", "chosen": "c", "rejected": "r"}]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows, indent=2))  # pretty-printed: the element index is the "line"
    lines = write_jsonl(tmp_path / "lines.json", rows)
    expected = [("p1", ("a", "b"), (1.0, 0.0), 1), ("p2", ("c", "r"), (1.0, 0.0), 2)]
    assert as_tuples(load_preference_data(str(array))[0]) == expected
    assert as_tuples(load_preference_data(lines)[0]) == expected
    # both files at once: order kept, one merged report
    examples, report = load_preference_data([str(array), lines])
    assert [e.source for e in examples] == [str(array)] * 2 + [lines] * 2
    assert (report.total, report.kept) == (4, 4)


def test_parquet_mixing_formats_and_saved_dataset(tmp_path):
    import datasets
    import pandas as pd

    rows = [{"prompt": "p1", "response": [["a"], ["b"], ["c"]], "score": [1, 3, 2]},
            {"prompt": "p2", "chosen": "good", "rejected": "bad"},
            {"prompt": "", "chosen": "x", "rejected": "y"}]
    # A mixed parquet file has every column on every row (null where absent).
    pd.DataFrame(rows).to_parquet(tmp_path / "mixed.parquet")
    examples, report = load_preference_data(str(tmp_path / "mixed.parquet"))
    assert as_tuples(examples) == [("p1", ("a", "b", "c"), (1.0, 3.0, 2.0), 1),
                                   ("p2", ("good", "bad"), (1.0, 0.0), 2)]
    assert report.skipped == {"empty prompt": 1}

    datasets.Dataset.from_list(rows[1:]).save_to_disk(str(tmp_path / "saved"))
    examples, report = load_preference_data(str(tmp_path / "saved"))
    assert as_tuples(examples) == [("p2", ("good", "bad"), (1.0, 0.0), 1)]
    assert (report.total, report.kept, dict(report.skipped)) == (2, 1, {"empty prompt": 1})


def test_conversational_pairs(tmp_path, tok):
    chat = char_tokenizer(chat_template=CHAT)
    u, a = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
    path = write_jsonl(tmp_path / "conv.jsonl", [
        {"chosen": [u("q1"), a("r1"), u("q2"), a("good")], "rejected": [u("q1"), a("r1"), u("q2"), a("bad")]},
        {"prompt": [u("hi")], "chosen": [a("yo")], "rejected": [a("no")]},  # trl style: completion only
        {"prompt": [u("hi")], "chosen": [u("hi"), a("yo")], "rejected": [u("hi"), a("no")]},
        {"chosen": [u("same")], "rejected": [u("same")]},  # no assistant turn
    ])
    examples, report = load_preference_data(path, tokenizer=chat)
    # The template's BOS is dropped (the tokenizer adds it) and its EOS too (appended as a token).
    assert as_tuples(examples) == [
        ("<user>q1<assistant>r1</s><user>q2<assistant>", ("good", "bad"), (1.0, 0.0), 1),
        ("<user>hi<assistant>", ("yo", "no"), (1.0, 0.0), 2),
        ("<user>hi<assistant>", ("yo", "no"), (1.0, 0.0), 3)]
    assert report.skipped == {"bad response type": 1}
    arrays = tokenize_ranked(examples[1:2], chat, max_length=24)
    seq = [BOS] + ids("<user>hi<assistant>yo") + [EOS]
    assert arrays.input_ids[0, 0, :len(seq)].tolist() == seq and arrays.attention_mask[0, 0].sum() == len(seq)

    with pytest.raises(DataError, match=r"conv\.jsonl:1: conversational rows .* need a tokenizer"):
        load_preference_data(path)
    with pytest.raises(DataError, match=r"conv\.jsonl:1: .*chat template"):
        load_preference_data(path, tokenizer=tok)  # a tokenizer without a chat template
    with pytest.raises(DataError, match=r"conv\.jsonl:1: chat template mismatch \(field 'chosen'\)"):
        load_preference_data(path, tokenizer=char_tokenizer(chat_template=BAD_CHAT), strict=True)


# --------------------------------------------------------------------------- cleaning


SKIP_ROWS = [  # (row, the reason it is skipped for)
    ('{"prompt": "p", "response": ["a", "b"], ', "invalid JSON"),
    ('[1, 2]', "not an object"),
    ({"question": "q", "answer": "a"}, "unknown format"),
    ({"response": ["a", "b"], "score": [1, 0]}, "missing prompt"),
    ({"prompt": "  \n", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "bad prompt type"),
    ({"prompt": "p", "response": ["a"], "score": [1]}, "fewer than 2 responses"),
    ({"prompt": "p", "chosen": "a"}, "fewer than 2 responses"),
    ({"prompt": "p"}, "fewer than 2 responses"),
    ({"prompt": "p", "response": ["a", "b", "c"], "score": [1, 0]}, "score count mismatch"),
    ({"prompt": "p", "response": ["a", "b"]}, "score count mismatch"),
    ({"prompt": "p", "response": ["a", "b"], "score": [True, False]}, "non-numeric score"),
    ('{"prompt": "p", "response": ["a", "b"], "score": [NaN, 1]}', "non-numeric score"),
    ({"prompt": "p", "response": ["a", "b"], "score": ["2", 1]}, "non-numeric score"),
    ({"prompt": "p", "response": ["a", [" "]], "score": [2, 1]}, "empty response"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "empty response"),
    ({"prompt": "p", "response": ["a", "b"], "score": [1, 1]}, "all scores tied"),
    ({"prompt": "p", "response": [["a", "b"], ["c"]], "score": [2, 1]}, "bad response type"),
    ({"prompt": "p", "response": ["a", 5], "score": [2, 1]}, "bad response type"),
    ({"prompt": "p", "response": "ab", "score": [2, 1]}, "bad response type"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
     "chat template mismatch"),
    # issue 36: crashes and silently kept rows (tests/test_data_row_faults.py has their messages)
    ('{"prompt": "p", "prompt": "q", "chosen": "a", "rejected": "b"}', "duplicate key"),
    ('{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}', "invalid text"),
    ('{"prompt": "p", "response": ["a", "b"], "score": [1, ' + "9" * 400 + ']}', "unreadable row"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "chosen equals rejected"),
    ({"prompt": "p", "response": ["a", "a"], "score": [1, 0]}, "conflicting scores"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score": [1, 0]}, "pair and ranked fields"),
]
GOOD_ROWS = [{"prompt": "p", "response": [["a"], ["b"]], "score": [2, 1]},
             {"prompt": "p", "response": ["a", "b", "c"], "score": [1, 1, 0]},  # ties allowed
             {"prompt": "p", "chosen": "a", "rejected": "b"}]


def test_every_skip_reason_is_counted_exactly(tmp_path):
    lines = [row for row, _ in SKIP_ROWS[:10]] + GOOD_ROWS + [""] + [row for row, _ in SKIP_ROWS[10:]]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    examples, report = load_preference_data(path, tokenizer=char_tokenizer(chat_template=BAD_CHAT))
    expected = collections.Counter(reason for _, reason in SKIP_ROWS)
    assert set(expected) == set(SKIP_REASONS)  # the file exercises every reason
    assert report.skipped == expected
    assert (report.total, report.kept) == (len(SKIP_ROWS) + 3, 3)
    assert [e.line for e in examples] == [11, 12, 13]
    assert examples[1].scores == (1.0, 1.0, 0.0)
    assert report.summary().startswith(f"kept 3 of {len(SKIP_ROWS) + 3} rows; skipped: "
                                       "bad response type 3, fewer than 2 responses 3, non-numeric score 3, "
                                       "empty response 2, score count mismatch 2, all scores tied 1")


@pytest.mark.parametrize("rows, message", [
    ([GOOD_ROWS[0], GOOD_ROWS[2], '{"prompt": "p", ', SKIP_ROWS[3][0]],
     r"mixed\.jsonl:3: invalid JSON: Expecting property name"),
    ([GOOD_ROWS[0], {"response": ["a", "b"], "score": [1, 0]}],
     r"mixed\.jsonl:2: missing prompt \(field 'prompt'\)$"),
    ([{"prompt": "p", "response": ["a", "b", "c"], "score": [1, 0]}],
     r"mixed\.jsonl:1: score count mismatch \(field 'score'\): 3 responses but 2 scores$"),
    ([GOOD_ROWS[0], {"prompt": "p", "responses": ["a", "b"], "scores": [1, float("inf")]}],
     r"mixed\.jsonl:2: non-numeric score \(field 'scores\[1\]'\): got inf$"),
    ([{"prompt": "p", "response": ["a", ["b", "c"]], "score": [1, 0]}],
     r"mixed\.jsonl:1: bad response type \(field 'response\[1\]'\)"),
])
def test_strict_names_file_line_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_preference_data(path, strict=True)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_preference_data(str(tmp_path / "nope.jsonl"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: not a folder written by datasets' save_to_disk"):
        load_preference_data(str(tmp_path / "folder"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type '\.csv'"):
        load_preference_data(str(tmp_path / "x.csv"))
    (tmp_path / "broken.json").write_text('[\n {"prompt": "p"},\n {"prompt" "q"}\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON array"):
        load_preference_data(str(tmp_path / "broken.json"))
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{", {"prompt": "p", "response": ["a", "b"], "score": [1, 1]}])
    good = write_jsonl(tmp_path / "good.jsonl", GOOD_ROWS)
    with pytest.raises(DataError, match=r"bad\.jsonl: no usable rows \(kept 0 of 2 rows; skipped: "
                                        r"all scores tied 1, invalid JSON 1\)"):
        load_preference_data([good, bad])  # one empty file among good ones is still an error


# --------------------------------------------------------------------------- tokenisation


def ex(prompt, *responses, scores=None):
    return RankedExample(prompt, responses, tuple(scores or range(len(responses), 0, -1)), "mem", 1)


def test_truncation_policy_exact_layout(tok):
    # max_length 16, min_prompt_tokens 4; the prompt "abcdefghij" is 11 tokens with BOS.
    examples = [
        ex("abcdefghij", "xyz", "uvwxyz0123"),  # longest response 11 with EOS: prompt keeps 16 - 11 = 5
        ex("abcdefghij", "klmnopqrstuvwxyz0123", "ab"),  # 21 with EOS: prompt at its floor of 4, response cut
        ex("ab", "klmnopqrstuvwxyz0123", "c"),  # a short prompt is never cut; the response is
        ex("abc", "de", "f"),  # fits
    ]
    report = CleanReport()
    arrays = tokenize_ranked(examples, tok, max_length=16, min_prompt_tokens=4, report=report)

    def row(*tokens):
        flat = [t for part in tokens for t in (ids(part) if isinstance(part, str) else [part])]
        return flat + [PAD] * (16 - len(flat))

    expected = [
        [row(BOS, "ghij", "xyz", EOS), row(BOS, "ghij", "uvwxyz0123", EOS)],
        [row(BOS, "hij", "klmnopqrstuv"), row(BOS, "hij", "ab", EOS)],  # cut from the right: no EOS
        [row(BOS, "ab", "klmnopqrstuvw"), row(BOS, "ab", "c", EOS)],
        [row(BOS, "abc", "de", EOS), row(BOS, "abc", "f", EOS)],
    ]
    assert arrays.input_ids.tolist() == expected
    assert arrays.input_ids.dtype == np.int32 and arrays.attention_mask.dtype == np.int32
    assert arrays.attention_mask.sum(-1).tolist() == [[9, 16], [16, 7], [16, 5], [7, 6]]
    assert (arrays.attention_mask == (arrays.input_ids != PAD)).all()
    assert report.truncated == {"prompt_truncated": 2, "response_truncated": 2}
    report.kept = report.total = 4
    assert report.summary() == "kept 4 of 4 rows; truncated: prompt truncated 2, response truncated 2"

    # default min_prompt_tokens = max_length // 4 = 4; no EOS when append_eos=False
    plain = tokenize_ranked(examples[1:2], tok, max_length=16, append_eos=False)
    assert plain.input_ids[0].tolist() == [row(BOS, "hij", "klmnopqrstuv"), row(BOS, "hij", "ab")]
    no_bos = tokenize_ranked(examples[:1], char_tokenizer(bos=False), max_length=8, min_prompt_tokens=2)
    assert no_bos.input_ids[0, 1].tolist() == ids("ij") + ids("uvwxyz")


def test_variable_k_slot_mask_and_num_slots(tok):
    examples = [ex("p", "a", "b", "c", scores=(3, 1, 2)), ex("q", "d", "e", scores=(0.5, -1))]
    arrays = tokenize_ranked(examples, tok, max_length=8)
    assert arrays.input_ids.shape == (2, 3, 8) and len(arrays) == 2
    assert arrays.slot_mask.tolist() == [[True, True, True], [True, True, False]]
    assert arrays.scores.tolist() == [[3, 1, 2], [0.5, -1, 0]] and arrays.scores.dtype == np.float32
    assert (arrays.input_ids[1, 2] == PAD).all() and arrays.attention_mask[1, 2].sum() == 0

    wide = tokenize_ranked(examples, tok, max_length=8, num_slots=4)
    assert wide.slot_mask.sum(-1).tolist() == [3, 2] and wide.input_ids.shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"mem:1: 3 responses but num_slots=2"):
        tokenize_ranked(examples, tok, max_length=8, num_slots=2)
    with pytest.raises(ValueError, match="min_prompt_tokens"):
        tokenize_ranked(examples, tok, max_length=8, min_prompt_tokens=8)


def test_pad_id_fallbacks():
    assert pad_id_of(SimpleNamespace(pad_token_id=5, eos_token_id=2)) == 5
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


# --------------------------------------------------------------------------- batching


def numbered(n, k=2, t=3):
    """Arrays whose row i is recognisable: input_ids[i, :, :] == i."""
    base = np.arange(n, dtype=np.int32)[:, None, None] * np.ones((1, k, t), np.int32)
    return RankedArrays(base, np.ones_like(base), np.arange(n * k, dtype=np.float32).reshape(n, k),
                        np.ones((n, k), bool))


def test_epoch_order_is_deterministic_per_seed_and_epoch():
    a = epoch_order(50, seed=3, epoch=1)
    assert np.array_equal(a, epoch_order(50, seed=3, epoch=1))
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=2))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=1))


def test_iterate_batches_resume_equals_uninterrupted():
    data = numbered(23)
    assert batches_per_epoch(23, 5) == 4 and batches_per_epoch(23, 5, drop_last=False) == 5
    full = list(iterate_batches(data, 5, seed=7, epoch=2))
    assert [b for b, _ in full] == [0, 1, 2, 3]
    rows = np.concatenate([batch["input_ids"][:, 0, 0] for _, batch in full])
    assert rows.tolist() == epoch_order(23, 7, 2)[:20].tolist()  # drop_last: 3 rows left out
    first = full[1][1]
    assert set(first) == {"input_ids", "attention_mask", "scores", "slot_mask"}
    assert first["input_ids"].shape == (5, 2, 3) and first["scores"].shape == (5, 2)
    assert first["scores"][:, 0].tolist() == (2 * first["input_ids"][:, 0, 0]).tolist()

    resumed = list(iterate_batches(data, 5, seed=7, epoch=2, start_batch=2))
    assert [b for b, _ in resumed] == [2, 3]
    for (b1, x), (b2, y) in zip(full[2:], resumed):
        assert b1 == b2 and all(np.array_equal(x[k], y[k]) for k in x)

    ordered = list(iterate_batches(data, 5, seed=7, epoch=2, shuffle=False, drop_last=False))
    assert [batch["input_ids"][:, 0, 0].tolist() for _, batch in ordered][-1] == [20, 21, 22]
    assert list(iterate_batches(data, 5, seed=7, epoch=2, start_batch=4)) == []
    with pytest.raises(ValueError, match="start_batch 5"):
        list(iterate_batches(data, 5, seed=7, epoch=2, start_batch=5))


def test_split_train_eval_is_deterministic_and_disjoint():
    data = numbered(40)
    train, evals = split_train_eval(data, 0.1, seed=1)
    again_train, again_eval = split_train_eval(data, 0.1, seed=1)
    rows = lambda d: d.input_ids[:, 0, 0].tolist()  # noqa: E731
    assert (len(train), len(evals)) == (36, 4)
    assert rows(train) == rows(again_train) and rows(evals) == rows(again_eval)
    assert sorted(rows(train) + rows(evals)) == list(range(40)) and rows(evals) == sorted(rows(evals))
    assert rows(split_train_eval(data, 0.1, seed=2)[1]) != rows(evals)
    assert len(split_train_eval(data, 0.001, seed=1)[1]) == 1  # at least one eval row
    train, evals = split_train_eval(data, 0.0, seed=1)
    assert (len(train), len(evals), evals.input_ids.shape) == (40, 0, (0, 2, 3))
    with pytest.raises(ValueError, match="no training rows"):
        split_train_eval(numbered(1), 0.5, seed=0)


def test_shipped_example_file_loads_all_formats():
    from pathlib import Path

    import json

    from jaxrlhf.data.formats import row_format
    from jaxrlhf.data.tokenizers import build_char_tokenizer
    example = Path(__file__).resolve().parents[1] / "examples" / "ranked_sample.jsonl"
    rows = [json.loads(line) for line in example.read_text().splitlines()]
    examples, report = load_preference_data(str(example), tokenizer=build_char_tokenizer())
    assert report.kept == len(rows) and not report.skipped
    assert [len(e.responses) for e in examples][:3] == [3, 2, 2]
    assert examples[2].scores == (1.0, 0.0)
    # ranked lists, pairs with and without a prompt, conversational pairs (issue 31, defect 11)
    assert any("response" in r for r in rows) and any("prompt" not in r and isinstance(r["chosen"], str) for r in rows)
    assert {"standard preference", "conversational preference"} <= {row_format(r) for r in rows}


def test_prompt_files_share_the_cleaning_loop(tmp_path):
    from jaxrlhf.data.prompts import load_prompts
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a", "limit": 3}\n{"prompt": \n[1]\n{"prompt": "  "}\n')
    examples, report = load_prompts(str(path))
    assert [e.prompt for e in examples] == ["a"] and examples[0].meta == {"limit": 3}
    assert dict(report.skipped) == {"invalid JSON": 1, "not an object": 1, "empty prompt": 1}
    with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
        load_prompts(str(path), strict=True)
