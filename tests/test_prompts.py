"""Prompt sets: every format, column choice, stable ids, and the bad inputs a person will hit."""

import json

import pytest

from deltalearn.io import DataError
from deltalearn.prompts import check_prompt_rows, content_id, load_prompts

ROWS = [
    {"q": "What is 2+2?", "qid": "a", "reference": "4"},
    {"q": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}], "qid": "b",
     "reference": "red"},
    {"q": "Write a haiku.", "qid": "c", "reference": ""},
]


def write_jsonl(path, rows, raw_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return path


def test_jsonl_column_choice_ids_and_extras(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ROWS)
    rows = load_prompts(p, column="q", id_column="qid")
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[0]["reference"] == "4"
    assert "qid" not in rows[0] and "q" not in rows[0]
    only = load_prompts(p, column="q", id_column="qid", keep=[])
    assert set(only[0]) == {"id", "prompt"}


def test_content_hash_ids_are_stable_and_distinct(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ROWS)
    a = load_prompts(p, column="q")
    b = load_prompts(p, column="q")
    assert [r["id"] for r in a] == [r["id"] for r in b] == [content_id(r["q"]) for r in ROWS]
    assert len({r["id"] for r in a}) == 3
    # The hash is of the content only, so another file with the same prompt in another position agrees.
    c = load_prompts(write_jsonl(tmp_path / "q.jsonl", ROWS[::-1]), column="q")
    assert {r["id"] for r in c} == {r["id"] for r in a}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "disk"])
def test_other_formats_give_the_same_rows(tmp_path, fmt):
    import datasets

    flat = [{"prompt": r["q"] if isinstance(r["q"], str) else "Name a color.", "id": r["qid"]} for r in ROWS]
    ds = datasets.Dataset.from_list(flat)
    if fmt == "parquet":
        path = tmp_path / "p.parquet"
        ds.to_parquet(str(path))
    elif fmt == "csv":
        path = tmp_path / "p.csv"
        ds.to_csv(str(path), index=False)
    else:
        path = tmp_path / "ds"
        ds.save_to_disk(str(path))
    rows = load_prompts(path, id_column="id")
    assert [(r["id"], r["prompt"]) for r in rows] == [(f["id"], f["prompt"]) for f in flat]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ROWS[:1], raw_lines=['{"q": "ok", "qid": "z"}\n', "{not json\n"])
    with pytest.raises(DataError) as e:
        load_prompts(p, column="q")
    assert str(p) in str(e.value) and "row 3" in str(e.value)


def test_misnamed_column_suggests_the_right_one(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"promt": "hi"}])
    with pytest.raises(DataError, match=r"no column 'prompt'.*did you mean 'promt'") as e:
        load_prompts(p)
    assert "row 1" in str(e.value)


def test_non_string_content_and_empty_prompt_are_errors(tmp_path):
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "fine"}, {"prompt": [{"role": "user", "content": 5}]}])
    with pytest.raises(DataError, match=r"row 2.*field 'prompt'.*'content' must be a string \(got int\)"):
        load_prompts(bad)
    num = write_jsonl(tmp_path / "n.jsonl", [{"prompt": 3}])
    with pytest.raises(DataError, match="got int"):
        load_prompts(num)
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "fine"}, {"prompt": "   "}])
    with pytest.raises(DataError, match=r"row 2.*empty prompt"):
        load_prompts(empty)


def test_empty_set_is_an_error(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_prompts(p)
    with pytest.raises(DataError, match="empty"):
        check_prompt_rows([])


def test_duplicates(tmp_path):
    dup_ids = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}])
    with pytest.raises(DataError, match=r"row 2.*duplicate id '1', first seen at row 1"):
        load_prompts(dup_ids, id_column="id")
    dup_prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}])
    with pytest.raises(DataError, match=r"row 3.*duplicate prompt.*dedupe"):
        load_prompts(dup_prompts)
    counts = {}
    rows = load_prompts(dup_prompts, dedupe=True, counts=counts)
    assert [r["prompt"] for r in rows] == ["a", "b"]
    assert counts == {"rows_read": 3, "duplicates_dropped": 1, "prompts": 2}


def test_limit_and_missing_file(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert len(load_prompts(p, column="q", limit=2)) == 2
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_api_rows_are_checked():
    with pytest.raises(DataError, match=r"row 2.*duplicate id 'x'"):
        check_prompt_rows([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    with pytest.raises(DataError, match=r"no key 'prompt'.*did you mean 'promt'"):
        check_prompt_rows([{"id": "x", "promt": "a"}])


def test_split_selects_rows_of_a_files_split_column(tmp_path):
    """--split is honoured for files and builtin sets (issue 17 item 3); the default applies only to files that
    have a split column; asking for a split of a file without one, or one it lacks, is an error."""
    train = load_prompts("builtin:sections_prompts", id_column="id", split="train", limit=2)
    assert [r["id"] for r in train] == ["howto-000", "howto-004"] and {r["split"] for r in train} == {"train"}
    held = load_prompts("builtin:sections_prompts", id_column="id", default_split="eval", limit=8)
    assert len(held) == 8 and {r["split"] for r in held} == {"eval"}
    assert len(load_prompts("builtin:sections_prompts", id_column="id")) == 312  # no split asked: every row
    plain = write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert len(load_prompts(plain, column="q", default_split="eval")) == 3  # no split column: every row
    with pytest.raises(DataError, match="has no 'split' column, so split 'eval' cannot be selected"):
        load_prompts(plain, column="q", split="eval")
    with pytest.raises(DataError, match=r"no rows with split 'test' \(splits in the file: eval, train\)"):
        load_prompts("builtin:sections_prompts", split="test")


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_an_error(tmp_path, limit):
    with pytest.raises(DataError, match=f"limit must be at least 1 \\(got {limit}\\)"):
        load_prompts(write_jsonl(tmp_path / "p.jsonl", ROWS), column="q", limit=limit)
