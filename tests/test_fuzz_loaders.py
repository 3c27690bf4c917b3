"""Property-based tests (hypothesis) for every reader of user data: prompts (jsonl / json / csv / tsv / parquet),
generations files, long and wide generation tables, pairs in flat and chat form (training and eval), recipes and
`--set` overrides. Inputs: arbitrary bytes, unicode, huge and empty fields, wrong types, missing and extra
columns. The only allowed outcomes are a correct load or the project's own DataError / ConfigError naming the
file (and row and field where there is one); anything else (a traceback from json, csv, pyarrow, yaml, ...) fails.

Budget: FAST examples per reader in the default suite, SLOW under `make test-slow`.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltalearn.io import DataError
from deltalearn.recipe import ConfigError

FAST, SLOW = 50, 600
OURS = (DataError, ConfigError)
WORK = Path(tempfile.mkdtemp(prefix="deltalearn-fuzz-"))


def fuzz(strategy):
    """Two tests from one property: FAST examples in the default suite, SLOW ones marked slow."""

    def deco(fn):
        common = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
        fast = settings(max_examples=FAST, **common)(given(strategy)(fn))
        slow = pytest.mark.slow(settings(max_examples=SLOW, **common)(given(strategy)(fn)))
        return fast, slow

    return deco


def fresh(name: str) -> Path:
    d = Path(tempfile.mkdtemp(dir=WORK))
    return d / name


def teardown_module():
    shutil.rmtree(WORK, ignore_errors=True)


def allowed(fn, path, *args, **kw):
    """Run a reader: return its result, or None for our own error naming the file; re-raise anything else."""
    try:
        return fn(*args, **kw)
    except OURS as e:
        assert path is None or str(path) in str(e) or Path(path).name in str(e), f"error does not name {path}: {e}"
        return None


# ---------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------

text = st.one_of(st.text(max_size=40), st.text(alphabet=string.printable, max_size=10),
                 st.just(""), st.just(" \n\t"), st.just("x" * 200_000), st.just("\x00\ud7ff\U0001f600\u202e"))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), text)
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(text, c, max_size=4)), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": text}), max_size=3)
message_ish = st.one_of(messages, st.lists(st.dictionaries(st.sampled_from(["role", "content", "x"]), json_values,
                                                           max_size=3), max_size=3))
field_value = st.one_of(json_values, text, message_ish)


def rows_with(columns: list[str]):
    """Rows that mostly have the expected columns (so loads can succeed), sometimes miss some or add others."""
    keys = st.sampled_from(columns + ["extra", "", "Prompt", "prompt "])
    row = st.one_of(st.fixed_dictionaries({c: field_value for c in columns}, optional={"extra": field_value}),
                    st.fixed_dictionaries({c: text for c in columns}),
                    st.dictionaries(keys, field_value, max_size=len(columns) + 1))
    return st.lists(row, max_size=6)


def write_rows(path: Path, rows: list, fmt: str) -> None:
    """Write rows in a user-facing format; rows the format cannot hold are written as best a user could."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8",
                        errors="surrogatepass")
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
    elif fmt in ("csv", "tsv"):
        import csv

        cols = sorted({k for r in rows if isinstance(r, dict) for k in r}) or ["prompt"]
        with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as f:
            w = csv.DictWriter(f, cols, delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            for r in rows:
                w.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()})
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(rows), path)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):  # what arrow cannot hold, as JSON text
            pq.write_table(pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()} for r in rows]), path)


raw_bytes = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      st.sampled_from([b"", b"\n\n", b"[", b"{}", b"[1,2]", b'{"prompt": "a"}', b"prompt\n\xff\n",
                                       b'{"prompt": "a"}\n{"prompt": ', b"[" * 5000 + b"]" * 5000, b"PAR1\x00PAR1",
                                       b'"a,b\n', b"prompt,prompt\nx,y\n", b"prompt\nx,y,z\n"]))
formats = st.sampled_from(["jsonl", "json", "csv", "tsv", "parquet"])


# ---------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------


def check_prompts_result(result, n_rows: int) -> None:
    from deltalearn.prompts import check_prompt

    if result is None:
        return
    assert 0 < len(result) <= n_rows
    assert len({r["id"] for r in result}) == len(result)
    for r in result:
        check_prompt(r["prompt"], source=None, row=0, field="prompt")


@fuzz(st.tuples(formats, raw_bytes))
def _prompts_bytes(case):
    fmt, data = case
    path = fresh(f"prompts.{fmt}")
    path.write_bytes(data)
    from deltalearn.prompts import load_prompts

    check_prompts_result(allowed(load_prompts, path, path), 10**9)


test_prompts_arbitrary_bytes, test_prompts_arbitrary_bytes_slow = _prompts_bytes


@fuzz(st.tuples(formats, rows_with(["prompt", "id"]), st.sampled_from([None, "id"]), st.booleans()))
def _prompts_rows(case):
    fmt, rows, id_column, dedupe = case
    path = fresh(f"prompts.{fmt}")
    write_rows(path, rows, fmt)
    from deltalearn.prompts import load_prompts

    check_prompts_result(allowed(load_prompts, path, path, id_column=id_column, dedupe=dedupe), len(rows))


test_prompts_structured_rows, test_prompts_structured_rows_slow = _prompts_rows


# ---------------------------------------------------------------------------------------------------------
# Generations: deltalearn's own files, long tables, the paper's wide format
# ---------------------------------------------------------------------------------------------------------


@fuzz(st.one_of(raw_bytes, rows_with(["id", "prompt", "response", "model"]).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())))
def _generations_file(data):
    from deltalearn.generate import read_generations

    path = fresh("model.jsonl")
    path.write_bytes(data)
    rows = allowed(read_generations, path, path)
    if rows is not None:
        assert len({r["id"] for r in rows}) == len(rows) and all("response" in r for r in rows)


test_generations_file, test_generations_file_slow = _generations_file


@fuzz(st.tuples(formats, st.one_of(rows_with(["id", "prompt", "response", "model"]),
                                   rows_with(["prompt", "small", "big"]))))
def _generation_tables(case):
    fmt, rows = case
    from deltalearn.pairs import load_generations

    path = fresh(f"gens.{fmt}")
    write_rows(path, rows, fmt)
    out = allowed(load_generations, path, [path])
    if out is not None:
        for label, got in out.items():
            assert isinstance(label, str) and all(isinstance(r["response"], str) for r in got)


test_generation_tables, test_generation_tables_slow = _generation_tables


# ---------------------------------------------------------------------------------------------------------
# Pairs: training (flat strings and chat messages, tokenized) and eval
# ---------------------------------------------------------------------------------------------------------

pair_rows = st.one_of(rows_with(["prompt", "chosen", "rejected"]),
                      st.lists(st.fixed_dictionaries({"prompt": messages, "chosen": messages, "rejected": messages}),
                               max_size=4))


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from deltalearn.models import load_tokenizer

    return load_tokenizer(smollm2_dir)


def _train_pairs_property(tokenizer):
    @fuzz(st.tuples(formats, pair_rows))
    def prop(case):
        fmt, rows = case
        from deltalearn.losses import LossType
        from deltalearn.tokenize import encode_pairs
        from deltalearn.train import load_pair_rows

        path = fresh(f"pairs.{fmt}")
        write_rows(path, rows, fmt)
        loaded = allowed(load_pair_rows, path, path, LossType("dpo"))
        if loaded is None:
            return
        got, source = loaded
        enc = allowed(encode_pairs, path, tokenizer, got, max_len=64, source=source)
        if enc is not None:
            encoded, kept, _ = enc
            assert len(encoded) == len(kept) <= len(got)
            assert all(e.chosen and e.rejected for e in encoded)

    return prop


def test_train_pairs(tokenizer):
    _train_pairs_property(tokenizer)[0]()


@pytest.mark.slow
def test_train_pairs_slow(tokenizer):
    _train_pairs_property(tokenizer)[1]()


@fuzz(st.tuples(formats, st.one_of(pair_rows, st.just([]))))
def _eval_pairs(case):
    fmt, rows = case
    from deltalearn.evaluate import load_eval_pairs

    path = fresh(f"eval_pairs.{fmt}")
    write_rows(path, rows, fmt)
    out = allowed(load_eval_pairs, path, str(path))
    if out is not None:
        assert all(r["prompt"] not in (None, "", []) for r in out)


test_eval_pairs, test_eval_pairs_slow = _eval_pairs


# ---------------------------------------------------------------------------------------------------------
# Recipes and --set overrides
# ---------------------------------------------------------------------------------------------------------

SECTIONS = ["name", "kind", "seed", "prompts", "generate", "pair", "train", "eval", "arms", "output_dir", "bogus"]
KEYS = ["model", "loss", "beta", "lr", "batch_size", "micro_batch_size", "path", "models", "rule", "max_steps",
        "epochs", "control", "sizes", "lora", "name", "train", "pair", "r", "x"]
recipe_data = st.recursive(
    scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(KEYS), c, max_size=4)),
    max_leaves=10)
recipes = st.dictionaries(st.sampled_from(SECTIONS), recipe_data, max_size=5)
override_text = st.one_of(
    st.text(max_size=30),
    st.tuples(st.lists(st.sampled_from(SECTIONS + KEYS + [""]), min_size=1, max_size=3),
              st.one_of(st.text(max_size=12), st.sampled_from(["5", "1e-3", "[1, 2", "{a: 1}", "null", "true",
                                                               "- x", "'", "!!python/object:os.system", "&a *a"])))
    .map(lambda kv: ".".join(kv[0]) + "=" + kv[1]))


@fuzz(st.one_of(raw_bytes, recipes.map(lambda d: json.dumps(d).encode())))
def _recipe_file(data):
    from deltalearn.recipe import load_recipe

    path = fresh("recipe.yaml")
    path.write_bytes(data)
    allowed(load_recipe, path, path)


test_recipe_file, test_recipe_file_slow = _recipe_file


@fuzz(st.tuples(recipes, st.lists(override_text, max_size=3)))
def _recipe_overrides(case):
    from deltalearn.recipe import load_recipe

    data, overrides = case
    try:
        load_recipe(None, overrides, data=data)
    except OURS:
        pass


test_recipe_overrides, test_recipe_overrides_slow = _recipe_overrides
