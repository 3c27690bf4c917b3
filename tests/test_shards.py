"""`deltalearn generate --shard I/N` + `--merge N`: disjoint stable shards by prompt id, each resumable, merged into
exactly what one unsharded run writes; malformed shards and overlapping or incomplete merges are clear errors."""

import json
from pathlib import Path

import pytest

from deltalearn.cli import main
from deltalearn.generate import merge_shards, read_generations
from deltalearn.io import DataError
from deltalearn.recipe import ConfigError
from deltalearn.shards import parse_shard, select_shard, shard_file, shard_of

from conftest import toy_pair_rows


@pytest.fixture()
def prompts_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": r["prompt"][0]["content"]} for i, r in enumerate(toy_pair_rows())]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def gen(model, prompts, out, *extra):
    args = ["generate", "--models", model, "--prompts", str(prompts), "--out", str(out), "--label", "m",
            "--id-column", "id", "--max-new-tokens", "6", "--precision", "fp32", "--batch-size", "4",
            "--no-progress", *extra]
    assert main(args) == 0


def by_id(path):
    return {r["id"]: r for r in read_generations(path)}


def test_two_shards_merged_equal_one_unsharded_run(tiny_model_dir, prompts_file, tmp_path):
    gen(tiny_model_dir, prompts_file, tmp_path / "one")
    out = tmp_path / "sharded"
    gen(tiny_model_dir, prompts_file, out, "--shard", "1/2")
    gen(tiny_model_dir, prompts_file, out, "--shard", "2/2")
    s1, s2 = by_id(shard_file(out, "m", (1, 2))), by_id(shard_file(out, "m", (2, 2)))
    assert s1 and s2 and not s1.keys() & s2.keys()  # disjoint, both non-empty for these 8 ids
    assert all(shard_of(i, 2) == 1 for i in s1) and all(shard_of(i, 2) == 2 for i in s2)

    # a shard killed mid-way resumes: drop its last row, rerun, the same row comes back
    f1 = shard_file(out, "m", (1, 2))
    lines = f1.read_text().splitlines()
    f1.write_text("\n".join(lines[:-1]) + "\n")
    gen(tiny_model_dir, prompts_file, out, "--shard", "1/2")
    assert by_id(f1) == s1

    gen(tiny_model_dir, prompts_file, out, "--merge", "2")
    merged, one = by_id(out / "m.jsonl"), by_id(tmp_path / "one" / "m.jsonl")
    assert merged.keys() == one.keys()
    for pid in one:
        assert {k: v for k, v in merged[pid].items()} == one[pid], pid
    meta = json.loads((out / "m.meta.json").read_text())
    assert meta["complete"] and meta["summary"]["rows"] == len(one)
    assert [r["id"] for r in read_generations(out / "m.jsonl")] == [f"p{i}" for i in range(len(one))]


def test_shards_are_stable_and_cover_the_set():
    rows = [{"id": f"x{i}", "prompt": "q"} for i in range(200)]
    parts = [select_shard(rows, (i, 4)) for i in range(1, 5)]
    assert sorted(r["id"] for p in parts for r in p) == sorted(r["id"] for r in rows)
    assert select_shard(rows[::-1], (3, 4)) == parts[2][::-1]  # membership depends on the id only
    assert all(len(p) > 25 for p in parts)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "a/b", "2", "1/0", "-1/2"])
def test_malformed_shard_names_the_flag_and_the_rule(bad):
    with pytest.raises(ConfigError, match=r"--shard .*expected I/N with whole numbers 1 <= I <= N"):
        parse_shard(bad)


def test_merge_refuses_duplicates_and_names_missing_ids(tmp_path):
    prompts = [{"id": f"p{i}", "prompt": "q"} for i in range(6)]
    meta = {"model": "m", "backend": "transformers", "complete": True}

    def write(shard, ids):
        f = shard_file(tmp_path, "m", shard)
        f.write_text("".join(json.dumps({"id": i, "prompt": "q", "response": "r"}) + "\n" for i in ids))
        f.with_name(f.name.replace(".jsonl", ".meta.json")).write_text(json.dumps(meta))

    own = {i: [p["id"] for p in select_shard(prompts, (i, 2))] for i in (1, 2)}
    write((1, 2), own[1] + own[2][:1])  # one of shard 2's ids copied into shard 1
    write((2, 2), own[2])
    with pytest.raises(DataError, match=rf"1 ids are in more than one shard, e.g. '{own[2][0]}'"):
        merge_shards(tmp_path, "m", 2, prompts)
    assert not (tmp_path / "m.jsonl").exists()

    write((1, 2), own[1])
    write((2, 2), own[2][1:])
    with pytest.raises(DataError, match=rf"1 prompts have no response yet \(first: \['{own[2][0]}'\]\); rerun "
                                        r"--shard 2/2"):
        merge_shards(tmp_path, "m", 2, prompts)
    assert not (tmp_path / "m.jsonl").exists()
    with pytest.raises(DataError, match="no file"):
        merge_shards(tmp_path, "m", 3, prompts)
