"""SFT and DPO data: every SFT format and skip reason, strict messages, token layout and loss
masks, truncation, packing, ranked -> pairs, pair tokenisation."""

import collections
import json

import numpy as np
import pytest

from char_tokenizers import BAD_CHAT, BOS, CHAT, EOS, PAD, VOCAB, char_tokenizer
from jaxrlhf.data import (PAIR_MODES, SFT_SKIP_REASONS, CleanReport, DataError, PairArrays, RankedExample,
                          SFTArrays, SFTExample, iterate_batches, load_preference_data, load_sft_data,
                          pack_sft, ranked_to_pairs, split_train_eval, tokenize_pairs, tokenize_ranked,
                          tokenize_sft)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer(chat_template=CHAT)


def ids(text):
    return [VOCAB[c] for c in text]


def row(t, *parts):
    """A right-padded row of length t from token ids and strings (one token per character)."""
    flat = [x for part in parts for x in (ids(part) if isinstance(part, str) else [part])]
    return flat + [PAD] * (t - len(flat))


def mask(t, zeros, ones):
    return [0] * zeros + [1] * ones + [0] * (t - zeros - ones)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


def as_tuples(examples):
    return [(e.prompt, e.response, e.line) for e in examples]


# --------------------------------------------------------------------------- SFT formats


def test_sft_formats_jsonl(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "p1", "response": "r1"},
        {"prompt": "p2", "response": ["r2"]},  # the seed's one-element list
        "",  # blank lines are ignored but still numbered
        {"prompt": "p3", "completion": "r3"},
        {"text": "plain text"},
        # earlier assistant turns are context; messages after the last assistant turn are dropped
        {"messages": [user("q1"), bot("a1"), user("q2"), bot("a2"), user("left over")]},
        {"messages": [{"role": "system", "content": "be nice"}, user("hi"), bot("yo")], "text": None},
    ])
    examples, report = load_sft_data(path, tokenizer=tok)
    # The template's BOS is dropped (the tokenizer adds it) and its EOS too (appended as a token).
    assert as_tuples(examples) == [("p1", "r1", 1), ("p2", "r2", 2), ("p3", "r3", 4), ("", "plain text", 5),
                                   ("<user>q1<assistant>a1</s><user>q2<assistant>", "a2", 6),
                                   ("<system>be nice<user>hi<assistant>", "yo", 7)]
    assert examples[0] == SFTExample("p1", "r1", path, 1)
    assert (report.total, report.kept, report.skipped) == (6, 6, collections.Counter())

    with pytest.raises(DataError, match=r"sft\.jsonl:6: conversational rows .* need a tokenizer"):
        load_sft_data(path)
    with pytest.raises(DataError, match=r"sft\.jsonl:6: .*chat template"):
        load_sft_data(path, tokenizer=char_tokenizer())  # a tokenizer without a chat template
    with pytest.raises(DataError, match=r"sft\.jsonl:6: chat template mismatch \(field 'messages'\)"):
        load_sft_data(path, tokenizer=char_tokenizer(chat_template=BAD_CHAT), strict=True)


def test_sft_json_parquet_and_saved_dataset(tmp_path, tok):
    import datasets
    import pandas as pd

    rows = [{"prompt": "p1", "response": "r1"}, {"text": "some text"},
            {"messages": [user("hi"), bot("yo")]}, {"prompt": "", "response": "x"}]
    expected = [("p1", "r1", 1), ("", "some text", 2), ("<user>hi<assistant>", "yo", 3)]
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows, indent=2))  # pretty-printed: the element index is the "line"
    lines = write_jsonl(tmp_path / "lines.json", rows)
    for path in (str(array), lines):
        examples, report = load_sft_data(path, tokenizer=tok)
        assert as_tuples(examples) == expected and report.skipped == {"empty prompt": 1}

    # A mixed parquet file has every column on every row (null where absent).
    pd.DataFrame(rows).to_parquet(tmp_path / "mixed.parquet")
    examples, report = load_sft_data(str(tmp_path / "mixed.parquet"), tokenizer=tok)
    assert as_tuples(examples) == expected and report.skipped == {"empty prompt": 1}

    datasets.Dataset.from_pandas(pd.DataFrame(rows[:2])).save_to_disk(str(tmp_path / "saved"))
    examples, report = load_sft_data([str(tmp_path / "saved"), lines], tokenizer=tok)
    assert as_tuples(examples) == expected[:2] + expected
    assert [e.source for e in examples] == [str(tmp_path / "saved")] * 2 + [lines] * 3
    assert (report.total, report.kept) == (6, 5)


# --------------------------------------------------------------------------- SFT cleaning


SKIP_ROWS = [  # (row, the reason it is skipped for)
    ('{"prompt": "p", "response": ', "invalid JSON"),
    ('["p", "r"]', "not an object"),
    ({"question": "q", "answer": "a"}, "unknown format"),
    ({"response": "r"}, "missing prompt"),
    ({"completion": "r", "text": "t"}, "missing prompt"),  # a prompt/response row, not a text row
    ({"prompt": " \n", "response": "r"}, "empty prompt"),
    ({"messages": [user(" "), bot("a")]}, "empty prompt"),
    ({"prompt": ["p"], "response": "r"}, "bad prompt type"),
    ({"prompt": "p", "response": "  "}, "empty response"),
    ({"prompt": "p"}, "empty response"),
    ({"text": ""}, "empty response"),
    ({"messages": [user("q"), bot(" ")]}, "empty response"),
    ({"prompt": "p", "response": ["a", "b"]}, "bad response type"),
    ({"prompt": "p", "completion": 3}, "bad response type"),
    ({"text": 3}, "bad response type"),
    ({"messages": [user("q"), bot("a")]}, "chat template mismatch"),  # with BAD_CHAT
    ({"messages": "hello"}, "bad messages"),
    ({"messages": [user("q"), {"role": "assistant"}]}, "bad messages"),
    ({"messages": [user("q"), user("again")]}, "bad messages"),  # no assistant message
    ('{"prompt": "p", "response": "r", "prompt": "q"}', "duplicate key"),
    ('{"prompt": "\\ud800", "response": "r"}', "invalid text"),
]
GOOD_ROWS = [{"prompt": "p", "response": "r"}, {"text": "t"}]
# a parser crash (any exception) on one row; no SFT row triggers one today (test_data_row_faults.py
# checks the path with a crashing parser)
UNTRIGGERED_REASONS = {"unreadable row"}


def test_every_sft_skip_reason_is_counted_exactly(tmp_path):
    lines = [r for r, _ in SKIP_ROWS[:8]] + GOOD_ROWS + [""] + [r for r, _ in SKIP_ROWS[8:]]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    examples, report = load_sft_data(path, tokenizer=char_tokenizer(chat_template=BAD_CHAT))
    expected = collections.Counter(reason for _, reason in SKIP_ROWS)
    assert set(expected) | UNTRIGGERED_REASONS == set(SFT_SKIP_REASONS)  # the file exercises every reason
    assert report.skipped == expected
    assert (report.total, report.kept) == (len(SKIP_ROWS) + 2, 2)
    assert as_tuples(examples) == [("p", "r", 9), ("", "t", 10)]
    assert report.summary().startswith(f"kept 2 of {len(SKIP_ROWS) + 2} rows; skipped: empty response 4, bad "
                                       "messages 3, bad response type 3, empty prompt 2, missing prompt 2")


@pytest.mark.parametrize("rows, message", [
    ([GOOD_ROWS[0], '{"prompt": ', GOOD_ROWS[1]], r"sft\.jsonl:2: invalid JSON: Expecting value"),
    ([GOOD_ROWS[1], {"response": "r"}], r"sft\.jsonl:2: missing prompt \(field 'prompt'\)$"),
    ([{"prompt": "p", "completion": ["a", "b"]}],
     r"sft\.jsonl:1: bad response type \(field 'completion'\): expected a string or a one-element list"),
    ([{"prompt": "p"}], r"sft\.jsonl:1: empty response \(field 'response'\): no 'response' or 'completion'"),
    ([GOOD_ROWS[0], GOOD_ROWS[0], {"text": " "}], r"sft\.jsonl:3: empty response \(field 'text'\)$"),
    ([{"messages": [user("q"), {"role": "assistant", "content": 5}]}],
     r"sft\.jsonl:1: bad messages \(field 'messages\[1\]'\): a message needs string 'role' and 'content'$"),
    ([{"messages": [user("q")]}], r"sft\.jsonl:1: bad messages \(field 'messages'\): no assistant message$"),
    ([{"messages": [user("q"), bot("")]}], r"sft\.jsonl:1: empty response \(field 'messages\[1\]'\)$"),
])
def test_sft_strict_names_file_line_and_field(tmp_path, tok, rows, message):
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_sft_data(path, tokenizer=tok, strict=True)


def test_sft_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no SFT data files given"):
        load_sft_data([])
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_sft_data(str(tmp_path / "nope.jsonl"))
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{", {"prompt": "p"}])
    with pytest.raises(DataError, match=r"bad\.jsonl: no usable rows \(kept 0 of 2 rows; skipped: "
                                        r"empty response 1, invalid JSON 1\)"):
        load_sft_data([write_jsonl(tmp_path / "good.jsonl", GOOD_ROWS), bad])


# --------------------------------------------------------------------------- SFT tokenisation


def sft(prompt, response):
    return SFTExample(prompt, response, "mem", 1)


def test_tokenize_sft_exact_layout_and_loss_mask(tok):
    examples = [sft("abc", "de"), sft("", "hello"), sft("<user>hi<assistant>", "yo")]
    arrays = tokenize_sft(examples, tok, max_length=24)
    assert arrays.input_ids.tolist() == [row(24, BOS, "abc", "de", EOS), row(24, BOS, "hello", EOS),
                                         row(24, BOS, "<user>hi<assistant>", "yo", EOS)]
    # trained: the response and the EOS; a text row trains everything after BOS
    assert arrays.loss_mask.tolist() == [mask(24, 4, 3), mask(24, 1, 6), mask(24, 20, 3)]
    assert arrays.attention_mask.tolist() == [mask(24, 0, 7), mask(24, 0, 7), mask(24, 0, 23)]
    assert (arrays.segment_ids == arrays.attention_mask).all()
    for name, a in arrays.as_dict().items():
        assert a.dtype == np.int32 and a.shape == (3, 24), name
    # the same tokens as the reward model's tokeniser
    ranked = tokenize_ranked([RankedExample(e.prompt, (e.response,), (0.0,), "mem", 1) for e in examples],
                             tok, max_length=24)
    assert np.array_equal(ranked.input_ids[:, 0], arrays.input_ids)

    plain = tokenize_sft(examples[:2], tok, max_length=8, append_eos=False)
    assert plain.input_ids.tolist() == [row(8, BOS, "abc", "de"), row(8, BOS, "hello")]
    assert plain.loss_mask.tolist() == [mask(8, 4, 2), mask(8, 1, 5)]
    # without BOS a text row starts with text: its first token has nothing to be predicted from
    no_bos = tokenize_sft(examples[1:2], char_tokenizer(bos=False), max_length=8)
    assert no_bos.input_ids[0].tolist() == row(8, "hello", EOS)
    assert no_bos.loss_mask[0].tolist() == mask(8, 1, 5)


def test_tokenize_sft_truncation_counts(tok):
    # max_length 12, min_prompt_tokens 4; the prompt "abcdefghij" is 11 tokens with BOS.
    examples = [
        sft("abcdefghij", "xyz"),  # 4 with EOS: the prompt keeps 12 - 4 = 8 tokens
        sft("abcdefghij", "klmnopqrstuvw"),  # prompt at its floor of 4, response cut (no EOS)
        sft("ab", "klmnopqrstuvw"),  # a short prompt is never cut; the response is
        sft("", "klmnopqrstuvw"),  # a text row: only the text is cut
        sft("abc", "de"),  # fits
    ]
    report = CleanReport()
    arrays = tokenize_sft(examples, tok, max_length=12, min_prompt_tokens=4, report=report)
    assert arrays.input_ids.tolist() == [row(12, BOS, "defghij", "xyz", EOS), row(12, BOS, "hij", "klmnopqr"),
                                         row(12, BOS, "ab", "klmnopqrs"), row(12, BOS, "klmnopqrstu"),
                                         row(12, BOS, "abc", "de", EOS)]
    assert arrays.loss_mask.tolist() == [mask(12, 8, 4), mask(12, 4, 8), mask(12, 3, 9), mask(12, 1, 11),
                                         mask(12, 4, 3)]
    assert report.truncated == {"prompt_truncated": 2, "response_truncated": 3}
    # default min_prompt_tokens = 12 // 4 = 3, BOS included
    assert tokenize_sft(examples[1:2], tok, max_length=12).input_ids[0].tolist() == \
        row(12, BOS, "ij", "klmnopqrs")
    with pytest.raises(ValueError, match="min_prompt_tokens"):
        tokenize_sft(examples, tok, max_length=12, min_prompt_tokens=12)
    with pytest.raises(ValueError, match="no examples"):
        tokenize_sft([], tok, max_length=12)


# --------------------------------------------------------------------------- packing


def segment_loss(arrays):
    """A stand-in for a model that isolates segments: each trained target t scores a value
    that depends on its position in its own segment and the token before it."""
    total = 0.0
    for r in range(len(arrays)):
        seg = arrays.segment_ids[r]
        for t in np.flatnonzero(arrays.loss_mask[r]):
            assert t > 0 and seg[t - 1] == seg[t] > 0  # the token it is predicted from is its own
            pos = t - np.flatnonzero(seg == seg[t])[0]
            total += np.sin(pos * 7.0 + arrays.input_ids[r, t - 1] * 3.0 + arrays.input_ids[r, t])
    return total


def test_pack_sft_layout_and_loss_equivalence(tok):
    examples = [sft("ab", "cd"), sft("", "hello"), sft("abcdefgh", "ij"), sft("a", "b"), sft("", "xy"),
                sft("abc", "defgh")]
    arrays = tokenize_sft(examples, tok, max_length=12)
    lengths = arrays.attention_mask.sum(-1).tolist()
    assert lengths == [6, 7, 12, 4, 4, 10]
    packed = pack_sft(arrays)
    # best-fit decreasing: 12 and 10 alone, 7 then 6 open rows, each 4 takes the tightest room
    # (the 7's row has 5 free, then the 6's row 6), so [12], [10], [7, 4], [6, 4]: 4 rows, not 5
    assert packed.input_ids.tolist() == [
        row(12, BOS, "abcdefghij", EOS), row(12, BOS, "abcdefgh", EOS), row(12, BOS, "hello", EOS, BOS, "ab", EOS),
        row(12, BOS, "abcd", EOS, BOS, "xy", EOS)]
    assert packed.segment_ids.tolist() == [mask(12, 0, 12), mask(12, 0, 10), [1] * 7 + [2] * 4 + [0],
                                           [1] * 6 + [2] * 4 + [0] * 2]
    assert packed.loss_mask[2].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0]
    assert (packed.attention_mask == (packed.segment_ids > 0)).all()

    # A tighter case: lengths 5,3,6,4,5,7 in rows of 10 fill 3 rows exactly (7+3, 6+4, 5+5);
    # none split, each example once, same trained tokens.
    many = tokenize_sft([sft("ab", "c"), sft("", "f"), sft("a", "bcd"), sft("", "de"), sft("xy", "z"),
                         sft("", "ghijk")], tok, max_length=10)
    assert many.attention_mask.sum(-1).tolist() == [5, 3, 6, 4, 5, 7]
    packed = pack_sft(many)
    assert packed.input_ids.shape == (3, 10) and packed.attention_mask.all()
    assert packed.segment_ids.max(-1).tolist() == [2, 2, 2]
    found = []
    for r in range(len(packed)):
        for s in range(1, packed.segment_ids[r].max() + 1):
            where = packed.segment_ids[r] == s
            first = where.argmax()
            assert np.flatnonzero(where).tolist() == list(range(first, first + where.sum()))  # contiguous
            assert packed.loss_mask[r, first] == 0  # the first token of a packed example is no target
            found.append((packed.input_ids[r, where].tolist(), packed.loss_mask[r, where].tolist()))
    expected = [(many.input_ids[i, :n].tolist(), many.loss_mask[i, :n].tolist())
                for i, n in enumerate(many.attention_mask.sum(-1))]
    assert sorted(found) == sorted(expected)  # each example whole, once, masks carried over
    assert packed.loss_mask.sum() == many.loss_mask.sum()
    assert segment_loss(packed) == pytest.approx(segment_loss(many), abs=1e-12)

    # a first-token loss flag in hand-made input is dropped: position 0 was never a target
    real = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
    hand = SFTArrays(np.array([[5, 6, 0], [7, 0, 0]], np.int32), real, real, real)
    out = pack_sft(hand)
    assert out.input_ids.tolist() == [[5, 6, 7]] and out.loss_mask.tolist() == [[0, 1, 0]]
    assert out.segment_ids.tolist() == [[1, 1, 2]]
    assert pack_sft(hand.take([])).input_ids.shape == (0, 3)


def test_sft_arrays_batch_and_split(tok):
    arrays = tokenize_sft([sft("p", "r" * i) for i in range(1, 11)], tok, max_length=16)
    first = arrays.take([2, 0])
    assert isinstance(first, SFTArrays) and first.input_ids.tolist() == arrays.input_ids[[2, 0]].tolist()
    batches = list(iterate_batches(arrays, 4, seed=0, epoch=0))
    assert len(batches) == 2 and set(batches[0][1]) == {"input_ids", "attention_mask", "loss_mask",
                                                        "segment_ids"}
    train, evals = split_train_eval(arrays, 0.2, seed=0)
    assert (len(train), len(evals)) == (8, 2) and isinstance(evals, SFTArrays)


# --------------------------------------------------------------------------- DPO


def ranked(*scores, prompt="p"):
    return RankedExample(prompt, tuple("abcdefgh"[:len(scores)]), tuple(map(float, scores)), "mem", 7)


def pairs_of(pairs):
    return [(p.prompt, p.responses) for p in pairs]


def test_ranked_to_pairs_modes_and_ties():
    examples = [ranked(1, 3, 2), ranked(2, 2, 0, 0), ranked(1, 1), ranked(0, 5)]
    best = ranked_to_pairs(examples)
    assert best == ranked_to_pairs(examples, "best_vs_worst")
    # ties: the first of the best and the first of the worst; an all-tied row gives nothing
    assert pairs_of(best) == [("p", ("b", "a")), ("p", ("a", "c")), ("p", ("b", "a"))]
    assert all(p.scores == (1.0, 0.0) and (p.source, p.line) == ("mem", 7) for p in best)

    every = ranked_to_pairs(examples, "all_pairs")
    assert [p.responses for p in every] == [("b", "a"), ("c", "a"), ("b", "c"),  # (1, 3, 2)
                                            ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),  # (2, 2, 0, 0)
                                            ("b", "a")]  # (0, 5)
    assert {p.scores for p in every} == {(1.0, 0.0)}
    with pytest.raises(ValueError, match="best_vs_worst, all_pairs"):
        ranked_to_pairs(examples, "random")
    assert PAIR_MODES == ("best_vs_worst", "all_pairs")


def test_tokenize_pairs_layout_shared_prompt_and_truncation(tok):
    pairs = [RankedExample("abc", ("de", "fghi"), (1.0, 0.0), "mem", 1),
             RankedExample("abcdefghij", ("xyz", "klmnopqrstuvw"), (1.0, 0.0), "mem", 2),
             RankedExample("", ("hello", "no"), (1.0, 0.0), "mem", 3)]
    report = CleanReport()
    arrays = tokenize_pairs(pairs, tok, max_length=12, min_prompt_tokens=4, report=report)
    assert isinstance(arrays, PairArrays) and arrays.input_ids.shape == (3, 2, 12)
    # the prompt is cut once, for the longer response: both sides keep "hij"
    assert arrays.input_ids.tolist() == [
        [row(12, BOS, "abc", "de", EOS), row(12, BOS, "abc", "fghi", EOS)],
        [row(12, BOS, "hij", "xyz", EOS), row(12, BOS, "hij", "klmnopqr")],
        [row(12, BOS, "hello", EOS), row(12, BOS, "no", EOS)]]
    assert arrays.loss_mask.tolist() == [[mask(12, 4, 3), mask(12, 4, 5)], [mask(12, 4, 4), mask(12, 4, 8)],
                                         [mask(12, 1, 6), mask(12, 1, 3)]]
    assert arrays.attention_mask.sum(-1).tolist() == [[7, 9], [8, 12], [7, 4]]
    assert report.truncated == {"prompt_truncated": 1, "response_truncated": 1}
    same = tokenize_ranked(pairs, tok, max_length=12, min_prompt_tokens=4)
    assert np.array_equal(same.input_ids, arrays.input_ids)
    assert np.array_equal(same.attention_mask, arrays.attention_mask)

    assert arrays.take([2]).input_ids.tolist() == arrays.input_ids[2:].tolist()
    assert set(arrays.as_dict()) == {"input_ids", "attention_mask", "loss_mask"} and len(arrays) == 3
    with pytest.raises(ValueError, match=r"mem:7: need exactly 2 responses"):
        tokenize_pairs([ranked(2, 1, 0)], tok, max_length=12)
    with pytest.raises(ValueError, match=r"mem:7: need exactly 2 responses, chosen \(scored higher\) first"):
        tokenize_pairs([ranked(0, 1)], tok, max_length=12)


def test_dpo_from_preference_files(tmp_path, tok):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "q", "response": [["a"], ["bb"], ["c"]], "score": [1, 3, 2]},
        {"prompt": "q2", "chosen": "good", "rejected": "bad"},
        {"chosen": [user("hi"), bot("yo")], "rejected": [user("hi"), bot("no")]},
    ])
    examples, _ = load_preference_data(path, tokenizer=tok)
    pairs = ranked_to_pairs(examples, "all_pairs")
    assert pairs_of(pairs) == [("q", ("bb", "a")), ("q", ("c", "a")), ("q", ("bb", "c")),
                               ("q2", ("good", "bad")), ("<user>hi<assistant>", ("yo", "no"))]
    arrays = tokenize_pairs(pairs, tok, max_length=24)
    assert arrays.input_ids[4].tolist() == [row(24, BOS, "<user>hi<assistant>yo", EOS),
                                            row(24, BOS, "<user>hi<assistant>no", EOS)]
    assert arrays.loss_mask[4].tolist() == [mask(24, 20, 3)] * 2
    assert [b for b, _ in iterate_batches(arrays, 2, seed=1, epoch=0)] == [0, 1]
