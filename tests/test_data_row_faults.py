"""Rows that used to kill a lenient run, or were silently kept: each is a counted skip with
a named reason, or a FILE:LINE error in strict mode, and the other rows load."""

import json

import pytest

from char_tokenizers import char_tokenizer
from jaxrlhf.data import DataError, load_preference_data, load_sft_data, tokenize_ranked

GOOD = '{"prompt": "p", "response": ["a", "b"], "score": [2, 1]}'
HUGE = "1" + "0" * 5000  # more digits than int() converts (4300)

# (JSONL line, reason, strict message after "FILE:LINE: ")
FAULTS = [
    ("[" * 100_000 + "]" * 100_000, "invalid JSON", "invalid JSON: nested too deeply"),
    ('{"prompt": "p", "response": ["a", "b"], "score": [1, ' + HUGE + ']}', "invalid JSON",
     "invalid JSON (field 'score[1]'): an integer of 5001 digits"),
    ('{"prompt": "\\ud800 q", "response": ["a", "b"], "score": [1, 0]}', "invalid text",
     "invalid text (field 'prompt'): surrogates not allowed at character 0"),
    ('{"prompt": "p", "response": ["a", "b"], "score": [1, 0], "prompt": "q"}', "duplicate key",
     "duplicate key (field 'prompt'): named twice in one object; the last value would silently win"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "chosen equals rejected",
     "chosen equals rejected (field 'rejected'): no preference to learn from"),
    ('{"prompt": "p", "response": ["a", "b", "a"], "score": [2, 1, 0]}', "conflicting scores",
     "conflicting scores (field 'response[2]'): the same answer as response[0] with score 0 instead of 2"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "response": ["c", "d"], "score": [1, 0]}',
     "pair and ranked fields", "pair and ranked fields (field 'response'): chosen/rejected and response/score in one row"),
    ('{"prompt": "p", "response": ["a", "b"], "score": [1, ' + "9" * 400 + ']}', "unreadable row",
     "unreadable row: OverflowError: int too large to convert to float"),
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_lenient_run_counts_each_fault_and_keeps_the_rest(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD] + [line for line, _, _ in FAULTS] + [GOOD])
    examples, report = load_preference_data(path)
    assert [e.line for e in examples] == [1, len(FAULTS) + 2]
    expected = {}
    for _, reason, _ in FAULTS:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(report.skipped) == expected
    tokenize_ranked(examples, char_tokenizer(), max_length=16)  # what is kept tokenises


@pytest.mark.parametrize("line, reason, message", FAULTS, ids=[f[1] + str(i) for i, f in enumerate(FAULTS)])
def test_strict_names_file_and_line(tmp_path, line, reason, message):
    path = write_lines(tmp_path / "d.jsonl", [GOOD, line])
    with pytest.raises(DataError) as err:
        load_preference_data(path, strict=True)
    assert str(err.value) == f"{path}:2: {message}"


def test_a_json_array_skips_only_the_element_with_a_huge_integer(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[" + GOOD + ', {"prompt": "p", "response": ["a", "b"], "score": [' + HUGE + ", 0]}]")
    examples, report = load_preference_data(str(path))
    assert len(examples) == 1 and dict(report.skipped) == {"invalid JSON": 1}


def test_a_json_array_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[" + GOOD + ", " + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(DataError, match=r"d\.json: unreadable JSON array: nested too deeply$"):
        load_preference_data(str(path))


def test_sft_rows_share_the_checks(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [
        '{"prompt": "p", "completion": "a"}',
        '{"prompt": "\\udfff", "completion": "a"}',
        '{"prompt": "p", "completion": "a", "completion": "b"}',
        "[" * 100_000 + "]" * 100_000,
    ])
    examples, report = load_sft_data(path)
    assert len(examples) == 1
    assert dict(report.skipped) == {"invalid text": 1, "duplicate key": 1, "invalid JSON": 1}


def test_good_rows_are_unchanged(tmp_path):
    rows = [{"prompt": "p", "response": ["a", "b", "c"], "score": [1, 1, 0]},  # ties of different answers
            {"prompt": "p", "response": ["a", "a", "b"], "score": [1, 1, 0]},  # a repeated answer, same score
            {"prompt": "p", "chosen": "a", "rejected": "b", "response": None}]  # null columns of parquet
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    examples, report = load_preference_data(path)
    assert len(examples) == 3 and not report.skipped


def test_any_exception_of_a_parser_is_a_counted_skip(tmp_path, monkeypatch):
    import jaxrlhf.data.sft as sft

    def crash(row):
        if row["text"] == "boom":
            raise TypeError("expected str, got float")
        return "", row["text"]

    monkeypatch.setattr(sft, "_text", crash)
    path = write_lines(tmp_path / "s.jsonl", ['{"text": "fine"}', '{"text": "boom"}'])
    examples, report = load_sft_data(path)
    assert len(examples) == 1 and dict(report.skipped) == {"unreadable row": 1}
    with pytest.raises(DataError) as err:
        load_sft_data(path, strict=True)
    assert str(err.value) == f"{path}:2: unreadable row: TypeError: expected str, got float"
