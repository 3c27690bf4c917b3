"""Model and dataset cards: the README.md with YAML metadata that the Hugging Face Hub shows for a repository.

`write_model_card(model_dir, ...)` is called with every trained model (train.py, into model/ before it is moved
into place); `write_dataset_card(pairs_dir, ...)` with every saved pair set (pairs.py). The YAML block carries the
run's numbers exactly as written to train_summary.json / pair_summary.json (under `deltalearn:`), the body the same
numbers rounded for reading. `add_eval_results` appends the eval table once a model has been evaluated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml

from deltalearn.io import read_json

CARD = "README.md"
EVAL_HEADING = "## Evaluation"


def front_matter(card_text: str) -> dict:
    """The YAML metadata of a card (between the leading `---` lines)."""
    if not card_text.startswith("---\n"):
        return {}
    end = card_text.index("\n---\n", 4)
    return yaml.safe_load(card_text[4:end]) or {}


def _card(meta: dict, body: str) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n" + body


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {_fmt(v)} |\n" for k, v in rows if v is not None)


def _is_hub_id(name: Optional[str]) -> bool:
    from deltalearn.hub import REPO_ID

    return bool(name) and not os.path.exists(str(name)) and bool(REPO_ID.match(str(name)))


def _pair_provenance(source: Optional[str]) -> dict:
    """What a pairs folder says about itself (pair_summary.json, delta_stats.json, its dataset card)."""
    info: dict = {}
    if not source or not Path(source).is_dir():
        return info
    folder = Path(source)
    for name, key in (("pair_summary.json", "summary"), ("delta_stats.json", "delta_stats")):
        if (folder / name).is_file():
            try:
                info[key] = read_json(folder / name)
            except Exception:  # noqa: BLE001 - a card is best-effort provenance, never a reason to fail a run
                pass
    return info


def delta_rows(stats: dict) -> list[tuple[str, Any]]:
    if not stats.get("scored"):
        return []
    lo, hi = stats["delta_ci95"]
    rows = [("quality measure", stats["quality"]), ("pairs scored", stats["scored"]),
            ("chosen mean", stats["chosen_mean"]), ("rejected mean", stats["rejected_mean"]),
            ("delta (chosen - rejected)", f"{stats['delta_mean']:.3g} (95% CI {lo:.3g} to {hi:.3g})"),
            ("pairs with chosen better", f"{stats['positive']:.0%}")]
    if stats.get("size_agreement") is not None:
        rows.append(("bigger model scores higher", f"{stats['size_agreement']:.0%} of {stats['size_pairs']:,}"))
    return rows


def model_card(config: dict, summary: dict, *, pairs_source: Optional[str], pairs_sha256: str,
               name: str) -> str:
    base = config.get("model")
    provenance = _pair_provenance(pairs_source)
    pair_summary = provenance.get("summary", {})
    loss = config.get("loss")
    meta: dict = {}
    if _is_hub_id(base):
        meta["base_model"] = base
    if _is_hub_id(pairs_source):
        meta["datasets"] = [pairs_source]
    meta["library_name"] = "transformers"
    meta["tags"] = ["deltalearn", "delta-learning", "preference-tuning", str(loss)] + (["lora"] if config.get("lora")
                                                                                      else [])
    meta["deltalearn"] = {
        "base_model": base, "pairs_source": pairs_source, "pairs_sha256": pairs_sha256, "pairs": summary["pairs"],
        "pair_rule": pair_summary.get("rule"), "loss": loss, "beta": summary.get("beta"), "lr": config.get("lr"),
        "steps": summary["steps"], "batch_size": config.get("batch_size"), "final_loss": summary.get("final_loss"),
        "precision": summary.get("precision"), "saved_dtype": summary.get("saved_dtype"),
        "train_seconds": summary.get("train_s"),
    }
    rule = pair_summary.get("rule")
    body = [f"# {name}\n",
            f"`{base}` preference-tuned with deltalearn ({loss}, beta {_fmt(summary.get('beta'))}) "
            f"on {summary['pairs']:,} pairs" + (f" made by the `{rule}` rule" if rule else "") + ". Delta learning: "
            "the chosen response need not be good, only better than the rejected one (Geng et al., COLM 2025).\n",
            "## Training\n",
            _table([("base model", base), ("loss", loss), ("beta", summary.get("beta")), ("learning rate",
                    config.get("lr")), ("epochs", config.get("epochs")), ("optimizer steps", summary["steps"]),
                    ("batch size (pairs)", config.get("batch_size")), ("max tokens", config.get("max_len")),
                    ("trained in", summary.get("precision")), ("weights saved as", summary.get("saved_dtype")),
                    ("final loss", summary.get("final_loss")), ("processes", summary.get("processes")),
                    ("training time (s)", summary.get("train_s"))]),
            "## Pairs\n",
            _table([("source", pairs_source or "(in memory)"), ("pairs trained on", summary["pairs"]),
                    ("pair rule", rule), ("control", pair_summary.get("control")),
                    ("generation sets", ", ".join(pair_summary.get("generation_sets", [])) or None),
                    ("sha256 of the rows", pairs_sha256)])]
    stats = provenance.get("delta_stats")
    if stats and delta_rows(stats):
        body += ["### Delta statistics\n", _table(delta_rows(stats))]
    recipe = {k: v for k, v in config.items() if v is not None}
    body += ["## Recipe\n", "The `train` section this model was trained with (`deltalearn train --set KEY=VALUE` "
             "or a recipe YAML reproduces it):\n", "```yaml\ntrain:\n"
             + "".join(f"  {line}\n" for line in yaml.safe_dump(recipe, sort_keys=False).splitlines()) + "```\n",
             EVAL_HEADING + "\n", "Not evaluated yet: `deltalearn eval --model <this folder> ...` adds the table "
             "here.\n"]
    return _card(meta, "\n".join(body))


def write_model_card(model_dir: str | Path, config: dict, summary: dict, *, pairs_source: Optional[str],
                     pairs_sha256: str, name: Optional[str] = None) -> Path:
    model_dir = Path(model_dir)
    path = model_dir / CARD
    path.write_text(model_card(config, summary, pairs_source=pairs_source, pairs_sha256=pairs_sha256,
                               name=name or model_dir.parent.name), encoding="utf-8")
    return path


def add_eval_results(model_dir: str | Path, metrics: dict[str, dict]) -> Optional[Path]:
    """Replace the card's evaluation section with `metrics` ({name: {mean, se, n}}); no card, nothing to do."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    rows = "| metric | mean | s.e. | n |\n|---|---|---|---|\n" + "".join(
        f"| {k} | {_fmt(m.get('mean'))} | {_fmt(m.get('se'))} | {_fmt(m.get('n'))} |\n"
        for k, m in metrics.items() if isinstance(m, dict) and isinstance(m.get("mean"), (int, float)))
    meta = front_matter(text)
    meta.setdefault("deltalearn", {})["eval"] = {k: m.get("mean") for k, m in metrics.items()
                                                if isinstance(m, dict) and isinstance(m.get("mean"), (int, float))}
    body = text[text.index("\n---\n", 4) + 5:].lstrip("\n")
    body = body[: body.index(EVAL_HEADING)] if EVAL_HEADING in body else body + "\n"
    path.write_text(_card(meta, body + EVAL_HEADING + "\n\n" + rows), encoding="utf-8")
    return path


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def dataset_card(pairs: list[dict], summary: Optional[dict], stats: Optional[dict], *, name: str) -> str:
    summary = summary or {}
    n = len(pairs)
    columns = list(pairs[0]) if pairs else []
    meta = {"task_categories": ["text-generation"], "tags": ["deltalearn", "delta-learning", "preference", "dpo"],
            "size_categories": [_size_category(n)],
            "deltalearn": {"pairs": n, "rule": summary.get("rule"), "control": summary.get("control"),
                           "generation_sets": summary.get("generation_sets"), "prompts": summary.get("prompts"),
                           "dropped": summary.get("dropped")}}
    if stats and stats.get("scored"):
        meta["deltalearn"]["delta_mean"] = stats["delta_mean"]
    dropped = {k: v for k, v in (summary.get("dropped") or {}).items() if v}
    body = [f"# {name}\n",
            f"{n:,} preference pairs (prompt, chosen, rejected) made by deltalearn"
            + (f" with the `{summary['rule']}` rule" if summary.get("rule") else "")
            + ". In delta learning the chosen response need not be good, only better than the rejected one. "
            "Train on it with `deltalearn train --pairs <this folder or repo id>`, or TRL's DPOTrainer (the "
            "prompt / chosen / rejected columns are TRL's explicit-prompt form).\n",
            "## How the pairs were made\n",
            _table([("rule", summary.get("rule")), ("control", summary.get("control")),
                    ("generation sets", ", ".join(summary.get("generation_sets") or []) or None),
                    ("prompts", summary.get("prompts")), ("pairs", n),
                    ("pairs dropped", ", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in dropped.items())
                     or "none")]),
            "## Columns\n", ", ".join(f"`{c}`" for c in columns) + "\n"]
    if stats and delta_rows(stats):
        body += ["## Delta statistics\n", _table(delta_rows(stats))]
    return _card(meta, "\n".join(body))


def write_dataset_card(pairs_dir: str | Path, pairs: list[dict], summary: Optional[dict] = None,
                       stats: Optional[dict] = None) -> Path:
    pairs_dir = Path(pairs_dir)
    path = pairs_dir / CARD
    name = pairs_dir.name.removeprefix(".").removesuffix(".tmp")
    path.write_text(dataset_card(pairs, summary, stats, name=name), encoding="utf-8")
    return path

