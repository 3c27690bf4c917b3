"""Evaluation: what a tuned model does on held-out data, with standard errors, written next to the run.

Built-in evals (each per item, so the report can take paired differences against the base model on the same items):
- utilities mu(x, y) on greedy responses to held-out prompts (`deltalearn.utility`: bold_sections, exact_answer, ...;
  the same definitions that built the data, paper Section 3);
- response length (tokens, words) and the truncation rate;
- held-out preference accuracy and reward margin on eval pairs: the implicit DPO reward
  beta * (log pi(y|x) - log pi_ref(y|x)) with per-token mean log-probs for dpo_norm (Tulu 3 / paper default), plus
  the reference-free log-prob margin (meaningful for the base model too);
- pairwise win rate against the base model's responses by an LLM judge (local model or an OpenAI-compatible
  endpoint), asked twice per prompt with the two responses swapped, which cancels the judge's position bias;
- lm-evaluation-harness tasks through `deltalearn.lmeval` (optional extra).

Output: `OUT/eval/<label>.json` = {"label", "model", "evaluator": {versions}, "settings", "metrics": {name: {"mean",
"se", "n"}}, "items": {"ids", "scores": {metric: [...]}}}; greedy responses in `OUT/eval/<label>.responses.jsonl`
(resumable: a rerun after a kill continues where it stopped).
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from deltalearn.io import DataError, read_json, read_table, write_json_atomic
from deltalearn.recipe import ConfigError, EvalConfig
from deltalearn.stats import mean_se

EVALUATOR_VERSION = "1"
"""Bumped whenever a metric's definition changes, so old and new eval files are never compared silently."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("deltalearn")
    except Exception:  # noqa: BLE001
        return "unknown"


def _metric(values: list[float]) -> dict:
    m, se = mean_se(values)
    return {"mean": m, "se": se, "n": len(values)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def default_label(model: str) -> str:
    """The result's name when no --label is given: the model's slug, where a trained model folder is named after
    its arm or run folder (runs/x/arms/dpo/model -> dpo), as `deltalearn generate` names its file."""
    p = Path(model)
    if not p.exists():
        return _slug(model)
    p = p.absolute()
    return _slug(p.parent.name if p.name == "model" and p.parent.name else p.name)


def same_label_other_model(result: Path, model: str) -> None:
    """Refuse to replace OUT/eval/LABEL.json when it holds another model's result: two models, one label."""
    if not result.exists():
        return
    try:
        prev = read_json(result)
    except DataError:
        prev = None
    if not isinstance(prev, dict) or "model" not in prev:
        raise DataError(result, "is not an eval result (no \"model\" field); refusing to replace it. Give --label "
                        "NAME or another --out")
    prev = prev["model"]
    if _same_model(prev, model):
        return
    raise DataError(result, f"holds the result of another model ({prev}); refusing to replace it with {model}'s. "
                    "Give --label NAME to keep both, or another --out")


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def load_eval_pairs(path: str, *, limit: Optional[int] = None) -> list[dict]:
    rows = read_table(path)
    out = []
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected"):
            if r.get(key) in (None, "", []):
                raise DataError(path, "missing or empty", row=i, field=key)
        out.append(r)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(path, "no eval pairs (the file is empty)")
    return out


def check_model_tokenizer(model, tokenizer, name: str) -> None:
    """A checkpoint saved with one tokenizer and loaded with another gives garbage silently: refuse it."""
    emb = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > emb:
        raise DataError(name, f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {emb} rows: "
                        "checkpoint and tokenizer do not match (was the model saved with a different tokenizer?)")


# ---------------------------------------------------------------------------------------------------------
# Metric blocks (pure where possible)
# ---------------------------------------------------------------------------------------------------------


def check_utilities(names: list[str]) -> None:
    """A misspelled utility is an error before any model loads, not after every answer has been generated."""
    from deltalearn.utility import get_utility

    for name in names:
        get_utility(name)


def utility_scores(responses: list[dict], utilities: list[str], *, source: Optional[str] = None
                   ) -> dict[str, list[float]]:
    """Per-item scores for each utility, plus lengths. `responses`: rows {"id", "response", "n_tokens",
    "truncated", ...}; exact_answer reads each row's "reference" (or "answer")."""
    from deltalearn.utility import get_utility

    fns = {u: get_utility(u) for u in utilities}
    scores: dict[str, list[float]] = {f"utility/{u}": [] for u in utilities}
    scores["length/words"] = []
    scores["length/tokens"] = []
    scores["truncated"] = []
    for i, r in enumerate(responses, start=1):
        text = r["response"]
        ref = r.get("reference", r.get("answer"))
        for u, fn in fns.items():
            if u == "exact_answer" and ref is None:
                raise DataError(source, "exact_answer needs a 'reference' (or 'answer') column in the eval prompts",
                                row=i, field="reference")
            scores[f"utility/{u}"].append(float(fn(text, ref)))
        scores["length/words"].append(float(len(text.split())))
        scores["length/tokens"].append(float(r.get("n_tokens") or 0))
        scores["truncated"].append(float(bool(r.get("truncated"))))
    return scores


def preference_scores(model, tokenizer, pairs: list[dict], *, reference=None, beta: float = 5.0,
                      reduction: str = "mean", max_len: int = 1024, batch_size: int = 8, precision: str = "auto",
                      source: Optional[str] = None) -> dict[str, list[float]]:
    """Held-out preference accuracy and margin. `reference`: (model, tokenizer) of the reference policy, or None.

    Reference-free: log pi(y_c) > log pi(y_r) (per-token mean for reduction="mean"). With a reference: the implicit
    reward r = beta * (log pi - log pi_ref); accuracy = r_c > r_r, margin = r_c - r_r (the DPO training metric).
    """
    from deltalearn.logps import pair_logps

    kw = dict(max_len=max_len, reduction=reduction, batch_size=batch_size, precision=precision, source=source)
    pc, pr = pair_logps(model, tokenizer, pairs, **kw)
    ok = ~(pc.isnan() | pr.isnan())
    if reference is not None:
        rc, rr = pair_logps(reference[0], reference[1], pairs, **kw)
        ok &= ~(rc.isnan() | rr.isnan())
    if int(ok.sum()) == 0:
        raise DataError(source, f"no eval pair could be scored: every prompt is longer than max_len={max_len}")
    idx = ok.nonzero().flatten().tolist()
    out = {"pref/logp_accuracy": [float(pc[i] > pr[i]) for i in idx],
           "pref/logp_margin": [float(pc[i] - pr[i]) for i in idx]}
    if reference is not None:
        margins = [beta * float((pc[i] - rc[i]) - (pr[i] - rr[i])) for i in idx]
        out["pref/accuracy"] = [float(m > 0) for m in margins]
        out["pref/margin"] = margins
    out["_ids"] = [str(pairs[i].get("id", i)) for i in idx]  # which pairs were scored
    return out


JUDGE_TEMPLATE = """You are judging two AI assistant responses to the same user request.

[User request]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is more helpful, correct and well written? Reply with exactly one letter: A or B."""

_NAMED = re.compile(r"\bresponse\s*\[?\s*([AB])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*([AB])\b")
_LETTER = re.compile(r"\b([AB])\b")


def parse_verdict(text: str) -> Optional[str]:
    """'A', 'B', or None when the reply names neither or both (counted as a tie and reported as invalid).

    Order of trust: 'Response A' anywhere, then a reply that starts with the letter, then a lone letter that is
    the only one of the two present (an article 'A' next to a 'B' verdict is ambiguous, so it is refused)."""
    text = text or ""
    for pattern in (_NAMED, _LEADING):
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    letters = set(_LETTER.findall(text))
    return letters.pop() if len(letters) == 1 else None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def judge_scores(candidate: list[dict], baseline: list[dict], judge: str, *, backend: str = "transformers",
                 base_url: Optional[str] = None, batch_size: int = 8, out_path: Optional[Path] = None,
                 progress: bool = True) -> tuple[dict[str, list[float]], list[str]]:
    """Per-prompt win of `candidate` over `baseline` in [0, 1]: the mean over both orders (win 1, tie or invalid
    0.5, loss 0). Rows are matched by id; both lists must cover the same prompts."""
    from deltalearn.generate import generate_responses

    base_by_id = {r["id"]: r for r in baseline}
    missing = [r["id"] for r in candidate if r["id"] not in base_by_id]
    if missing:
        raise DataError(out_path, f"{len(missing)} prompts have no baseline response (first: {missing[:3]})")
    jp = []
    for r in candidate:
        b = base_by_id[r["id"]]
        p = _prompt_text(r["prompt"])
        jp.append({"id": f"{r['id']}|cand-first", "prompt": JUDGE_TEMPLATE.format(prompt=p, a=r["response"],
                                                                                   b=b["response"])})
        jp.append({"id": f"{r['id']}|base-first", "prompt": JUDGE_TEMPLATE.format(prompt=p, a=b["response"],
                                                                                   b=r["response"])})
    # 24 tokens: enough for "The better response is [Response A]" from a small judge that will not stop at a letter.
    rows = generate_responses(judge, jp, out_path, max_new_tokens=24, temperature=0.0, batch_size=batch_size,
                              backend=backend, base_url=base_url, progress=progress)
    verdict = {r["id"]: parse_verdict(r["response"]) for r in rows}
    ids = [r["id"] for r in candidate]
    return win_scores([(verdict[f"{i}|cand-first"], verdict[f"{i}|base-first"]) for i in ids]), ids


def win_scores(verdicts: list[tuple[Optional[str], Optional[str]]]) -> dict[str, list[float]]:
    """Per-prompt scores from (verdict with the candidate shown first, verdict with it shown second).

    A judge that always picks the first position scores exactly 0.5 everywhere: the swap cancels order bias.
    """
    wins, first, invalid = [], [], []
    for v1, v2 in verdicts:
        s1 = 0.5 if v1 is None else float(v1 == "A")  # candidate is A in the first order
        s2 = 0.5 if v2 is None else float(v2 == "B")  # and B in the swapped one
        wins.append((s1 + s2) / 2)
        first.extend(float(v == "A") for v in (v1, v2) if v is not None)
        invalid.append((float(v1 is None) + float(v2 is None)) / 2)
    return {"judge/win_rate": wins, "judge/first_position_rate": first, "judge/invalid": invalid}


# ---------------------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------------------


def _fingerprint(model: str, cfg: EvalConfig, **settings) -> str:
    """Identity of an eval: the weights (file sizes and times, via models.resolve) and every setting."""
    from deltalearn.io import sha256_json
    from deltalearn.recipe import to_dict

    try:
        from deltalearn.models import resolve

        weights = resolve(model).fingerprint
    except DataError:
        weights = model
    return sha256_json({"model": model, "weights": weights, "cfg": to_dict(cfg), "version": EVALUATOR_VERSION,
                        **settings})[:16]


def evaluate_model(model: str, cfg: EvalConfig, out_dir: str | Path, *, label: Optional[str] = None,
                   reference: Optional[str] = None, beta: float = 5.0, reduction: str = "mean",
                   baseline_responses: Optional[list[dict]] = None, judge_backend: str = "transformers",
                   judge_base_url: Optional[str] = None, limit: Optional[int] = None, max_len: int = 1024,
                   precision: str = "auto", lm_eval_limit: Optional[int] = None, lm_eval_include: Optional[str] = None,
                   progress: bool = True) -> dict[str, Any]:
    """Evaluate one model by `cfg` (recipe.EvalConfig) and write OUT/eval/<label>.json. Returns the result."""
    from deltalearn.locks import artifact_lock

    check_utilities(cfg.utilities)
    label = label or default_label(model)
    from deltalearn.outputs import claim

    eval_dir = claim(Path(out_dir) / "eval", "eval")  # OUT/eval holds results only; OUT itself is not touched
    with artifact_lock(eval_dir / f"{label}.json", what="eval result"):
        same_label_other_model(eval_dir / f"{label}.json", model)
        return _evaluate_model(model, cfg, eval_dir, label, reference=reference, beta=beta, reduction=reduction,
                               baseline_responses=baseline_responses, judge_backend=judge_backend,
                               judge_base_url=judge_base_url, limit=limit, max_len=max_len, precision=precision,
                               lm_eval_limit=lm_eval_limit, lm_eval_include=lm_eval_include, progress=progress)


def _evaluate_model(model: str, cfg: EvalConfig, eval_dir: Path, label: str, *, reference, beta, reduction,
                    baseline_responses, judge_backend, judge_base_url, limit, max_len, precision, lm_eval_limit,
                    lm_eval_include, progress) -> dict[str, Any]:
    t0 = time.time()
    # A finished eval of the same weights with the same settings is not redone (a rerun of `deltalearn run`).
    fingerprint = _fingerprint(model, cfg, reference=reference, beta=beta, reduction=reduction, limit=limit,
                               max_len=max_len, precision=precision, lm_eval_limit=lm_eval_limit,
                               judge_backend=judge_backend, judge_base_url=judge_base_url,
                               baseline=[(r["id"], r["response"]) for r in baseline_responses or []])
    done = eval_dir / f"{label}.json"
    if done.exists():
        try:
            prev = read_json(done)
        except DataError:
            prev = None
        if isinstance(prev, dict) and prev.get("fingerprint") == fingerprint:
            return prev
    if not (cfg.prompts or cfg.pairs or cfg.lm_eval_tasks):
        raise ConfigError("nothing to evaluate: give eval prompts (--prompts), eval pairs (--pairs) or lm-eval tasks")
    if cfg.judge and not cfg.prompts:
        raise ConfigError("a judge compares responses to eval prompts: give --prompts too")
    if cfg.judge and baseline_responses is None:
        raise ConfigError("the judge needs the base model's responses to compare against (--base MODEL)")
    prompts = None
    if cfg.prompts:
        p = cfg.prompts
        if not (p.path or p.dataset):
            raise ConfigError("eval.prompts: set a path or dataset")
        from deltalearn.prompts import load_prompts

        prompts = load_prompts(p.path, column=p.column, id_column=p.id_column, dataset=p.dataset, split=p.split,
                               default_split="eval", limit=limit or p.limit, dedupe=True)
    pairs = load_eval_pairs(cfg.pairs, limit=limit) if cfg.pairs else None

    scores: dict[str, list[float]] = {}
    item_ids: dict[str, list[str]] = {}
    settings: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
                                "temperature": 0.0, "system_prompt": cfg.system_prompt, "utilities": cfg.utilities,
                                "prompts": (cfg.prompts.path or cfg.prompts.dataset) if cfg.prompts else None,
                                "split": (cfg.prompts.split or "eval (default)") if cfg.prompts else None,
                                "n_prompts": len(prompts) if prompts else 0, "pairs": cfg.pairs,
                                "limit": limit, "precision": precision,
                                "no_repeat_ngram_size": cfg.no_repeat_ngram_size}
    if prompts or pairs:
        import torch

        from deltalearn.generate import generate_responses
        from deltalearn.models import load_model

        device = "cuda" if torch.cuda.is_available() else None
        m, tok = load_model(model, device=device)
        m.eval()
        check_model_tokenizer(m, tok, model)
        try:
            if prompts:
                responses = generate_responses(m, prompts, eval_dir / f"{label}.responses.jsonl", tokenizer=tok,
                                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                               system_prompt=cfg.system_prompt, precision=precision,
                                               progress=progress, label=f"{label} ({model})",
                                               no_repeat_ngram_size=cfg.no_repeat_ngram_size)
                src = cfg.prompts.path or cfg.prompts.dataset
                for k, v in utility_scores(responses, cfg.utilities, source=src).items():
                    scores[k], item_ids[k] = v, [r["id"] for r in responses]
            if pairs:
                ref = None
                if reference and reference != model:
                    ref = load_model(reference, device=device)
                    ref[0].eval()
                ps = preference_scores(m, tok, pairs, reference=ref, beta=beta, reduction=reduction,
                                       max_len=max_len, batch_size=max(1, cfg.batch_size // 2), precision=precision,
                                       source=cfg.pairs)
                ids = ps.pop("_ids")
                for k, v in ps.items():
                    scores[k], item_ids[k] = v, ids
                settings.update({"reference": reference if ref is not None else None, "beta": beta,
                                 "reduction": reduction, "max_len": max_len, "n_pairs": len(pairs)})
                del ref
        finally:
            from deltalearn.generate import free_model

            free_model(m)
        if cfg.judge:
            js, ids = judge_scores(responses, baseline_responses, cfg.judge, backend=judge_backend,
                                   base_url=judge_base_url, batch_size=cfg.batch_size,
                                   out_path=eval_dir / f"{label}.judge.jsonl", progress=progress)
            for k, v in js.items():
                scores[k] = v
                item_ids[k] = ids if len(v) == len(ids) else []
            settings.update({"judge": cfg.judge, "judge_backend": judge_backend, "judge_base_url": judge_base_url,
                             "judge_position_swap": True})

    metrics = {k: _metric(v) for k, v in scores.items() if v}
    lm_settings = None
    if cfg.lm_eval_tasks:
        from deltalearn.lmeval import run_lm_eval

        lm = run_lm_eval(model, cfg.lm_eval_tasks, limit=lm_eval_limit, include=lm_eval_include,
                         batch_size=cfg.batch_size)
        metrics.update(lm["metrics"])
        lm_settings = lm["settings"]

    from deltalearn.lmeval import lm_eval_version

    result = {
        "label": label, "model": model,
        "evaluator": {"name": "deltalearn.evaluate", "version": EVALUATOR_VERSION, "deltalearn": package_version(),
                      "lm_eval": lm_eval_version() if cfg.lm_eval_tasks else None},
        "settings": {**settings, **({"lm_eval": lm_settings} if lm_settings else {})},
        "metrics": metrics,
        "items": {"ids": item_ids, "scores": {k: v for k, v in scores.items() if v}},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t0, 2),
        "fingerprint": fingerprint,
    }
    write_json_atomic(eval_dir / f"{label}.json", result)
    return result


# ---------------------------------------------------------------------------------------------------------
# A run's arms
# ---------------------------------------------------------------------------------------------------------


def run_arms(run_dir: Path) -> dict[str, Path]:
    """arm name -> its trained model folder, for arms whose training completed."""
    arms = {}
    for d in sorted((run_dir / "arms").glob("*")):
        if (d / "model" / "config.json").exists():
            arms[d.name] = d / "model"
    return arms


def _manifest_recipe(run_dir: Path) -> dict:
    mf = run_dir / "manifest.json"
    if not mf.exists():
        return {}
    from deltalearn.manifest import read_manifest

    m = read_manifest(mf)
    rec = m.get("recipe") or m.get("config") or {}
    return rec if isinstance(rec, dict) else {}


def evaluate_run(run_dir: str | Path, cfg: Optional[EvalConfig] = None, *, base: Optional[str] = None,
                 **kw) -> dict[str, dict]:
    """Evaluate the base model (label "base") and every completed arm (label = arm name) of a run.

    The eval config and base model come from the run's manifest (its resolved recipe) unless given.
    """
    from deltalearn.recipe import from_dict

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, "run folder not found")
    rec = _manifest_recipe(run_dir)
    if cfg is None:
        cfg = from_dict(EvalConfig, rec.get("eval") or {}, "manifest.json: recipe.eval")
    train = rec.get("train") or {}
    base = base or train.get("model")
    arms = run_arms(run_dir)
    if not arms:
        raise DataError(run_dir / "arms", "no trained arm (no arms/<name>/model/config.json): train first")
    if base is None:
        raise DataError(run_dir / "manifest.json", "no base model recorded (recipe.train.model); pass --base MODEL")
    from deltalearn.outputs import claim

    claim(run_dir, "run", flag="--run")  # results go to RUN/eval: a run folder only
    kw.setdefault("beta", train.get("beta") or 5.0)
    kw.setdefault("reduction", "mean" if train.get("loss", "dpo_norm") in ("dpo_norm", "simpo") else "sum")
    kw.setdefault("max_len", train.get("max_len") or 1024)
    results = {}
    base_cfg = EvalConfig(**{**cfg.__dict__, "judge": None})
    results["base"] = evaluate_model(base, base_cfg, run_dir, label="base", **kw)
    baseline = None
    if cfg.judge:
        from deltalearn.generate import read_generations

        baseline = read_generations(run_dir / "eval" / "base.responses.jsonl")
    for name, path in arms.items():
        results[name] = evaluate_model(str(path), cfg, run_dir, label=name, reference=base,
                                       baseline_responses=baseline, **kw)
        from deltalearn.cards import add_eval_results

        add_eval_results(path, results[name].get("metrics", {}))  # the model card's eval table
    return results


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def add_cli_args(p) -> None:
    p.add_argument("--model", help="model to evaluate: smollm2-135m, lab:RUNG, a folder (e.g. runs/x/arms/a/model), "
                   "a .gguf file or a hub id")
    p.add_argument("--run", help="a run folder: evaluate its base model and every trained arm")
    p.add_argument("--out", help="where eval/<label>.json goes (default: the run folder, or runs/eval)")
    p.add_argument("--label", help="name of the result file (default: from the model name)")
    p.add_argument("--prompts", help="held-out prompts (.jsonl/.json/.csv/.parquet, a dataset folder, builtin:NAME)")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompt (default: %(default)s)")
    p.add_argument("--id-column", default=None,
                   help="column with stable prompt ids (default: a hash of the prompt); pairs per-prompt scores")
    p.add_argument("--split", default=None,
                   help="which rows of the prompt file to evaluate, by its `split` column (default: eval, the "
                        "held-out split, when the file has that column; every row otherwise; a hub dataset: train)")
    p.add_argument("--utilities", nargs="*", default=None, help="utilities to score, e.g. bold_sections exact_answer")
    p.add_argument("--pairs", help="held-out pairs (prompt/chosen/rejected) for preference accuracy and margin")
    p.add_argument("--reference", help="reference model for the implicit reward (default: none; with --run: base)")
    p.add_argument("--beta", type=float, default=None, help="beta of the implicit reward (default 5, dpo_norm)")
    p.add_argument("--reduction", choices=["mean", "sum"], default=None,
                   help="per-token mean (dpo_norm, default) or summed log-probs")
    p.add_argument("--judge", help="judge model for the win rate against the base model (position-swapped)")
    p.add_argument("--judge-backend", choices=["transformers", "openai"], default="transformers",
                   help="run the judge in process, or through an OpenAI-compatible server (--judge-base-url)")
    p.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--base", help="base model: the judge's comparison (and, with --run, the model tuned)")
    p.add_argument("--lm-eval", nargs="*", default=None, metavar="TASK",
                   help="lm-evaluation-harness tasks, `preset:tulu3-dev`, or `local:tiny_facts` (needs [eval])")
    from deltalearn.cliargs import positive_int

    p.add_argument("--lm-eval-limit", type=positive_int, help="lm-eval: at most N documents per task (default: all)")
    p.add_argument("--lm-eval-include", help="lm-eval: a folder of your own YAML tasks")
    p.add_argument("--limit", type=positive_int, help="at most N prompts (of the split) / pairs (default: all)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="longest greedy response (default: eval.max_new_tokens, 256)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="prompts per generation batch (default: eval.batch_size, 16)")
    p.add_argument("--max-len", type=int, default=None,
                   help="max tokens of prompt + response for eval pairs (default: the run's train.max_len, else 1024)")
    p.add_argument("--system-prompt", help="a system message put before every prompt (default: none)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 where the device has fast bf16 (AMX CPUs, Ampere+ GPUs), else fp32")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def _cfg_from_args(args, base_cfg: Optional[EvalConfig] = None) -> EvalConfig:
    from deltalearn.recipe import PromptsConfig

    cfg = EvalConfig(**(base_cfg.__dict__ if base_cfg else {}))
    if args.prompts:
        cfg.prompts = PromptsConfig(path=args.prompts, column=args.prompt_column, id_column=args.id_column,
                                    split=args.split)
    if args.utilities is not None:
        cfg.utilities = list(args.utilities)
    if args.pairs:
        cfg.pairs = args.pairs
    if args.judge:
        cfg.judge = args.judge
    if args.lm_eval is not None:
        cfg.lm_eval_tasks = list(args.lm_eval)
    if args.max_new_tokens:
        cfg.max_new_tokens = args.max_new_tokens
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.system_prompt:
        cfg.system_prompt = args.system_prompt
    return cfg


def _print_result(res: dict, base: Optional[dict] = None) -> None:
    """One line per metric at the precision its s.e. allows; with a base result, the paired gain over the same
    prompts beside it."""
    from deltalearn.report import gain
    from deltalearn.stats import fmt_mean_se

    print(f"{res['label']} ({res['model']}):")
    for k, v in res["metrics"].items():
        line = f"  {k:<32} {fmt_mean_se(v['mean'], v['se']):>16}  (n={v['n']})"
        g = gain(base, res, k) if base is not None and base is not res else None
        if g is not None:
            line += f"   vs base {fmt_mean_se(g['gain'], g['se'], signed=True)}{' paired' if g['paired'] else ''}"
        print(line)


def run_cli(args) -> int:
    if bool(args.model) == bool(args.run):
        raise ConfigError("give exactly one of --model M (one model) or --run RUN_DIR (a run's base + arms)")
    kw: dict[str, Any] = dict(judge_backend=args.judge_backend, judge_base_url=args.judge_base_url,
                              limit=args.limit, precision=args.precision, lm_eval_limit=args.lm_eval_limit,
                              lm_eval_include=args.lm_eval_include, progress=not args.no_progress)
    for key in ("beta", "reduction", "max_len"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.run:
        run_dir = Path(args.run)
        if not run_dir.is_dir():
            raise DataError(run_dir, "run folder not found")
        rec = _manifest_recipe(run_dir)
        from deltalearn.recipe import from_dict

        base_cfg = from_dict(EvalConfig, rec.get("eval") or {}, f"{run_dir}/manifest.json: recipe.eval")
        results = evaluate_run(run_dir, _cfg_from_args(args, base_cfg), base=args.base, **kw)
        for res in results.values():
            _print_result(res, results.get("base"))
        print(f"wrote {run_dir / 'eval'}/{{{','.join(results)}}}.json", file=sys.stderr)
        return 0
    cfg = _cfg_from_args(args)
    out = Path(args.out or "runs/eval")
    from deltalearn.outputs import claim

    claim(out / "eval", "eval")
    baseline = None
    if cfg.judge:
        check_utilities(cfg.utilities)  # before the base model's answers, not after them
        if not args.base:
            raise ConfigError("--judge compares against the base model's responses: pass --base MODEL")
        if not cfg.prompts:
            raise ConfigError("--judge needs --prompts")
        from deltalearn.generate import generate_responses
        from deltalearn.prompts import load_prompts

        prompts = load_prompts(cfg.prompts.path, column=cfg.prompts.column, id_column=cfg.prompts.id_column,
                               split=cfg.prompts.split, default_split="eval", limit=args.limit, dedupe=True)
        baseline = generate_responses(args.base, prompts, out / "eval" / f"{_slug(args.base)}.baseline.jsonl",
                                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                      system_prompt=cfg.system_prompt, precision=args.precision,
                                      progress=not args.no_progress)
    kw.setdefault("reduction", "mean")
    res = evaluate_model(args.model, cfg, out, label=args.label, reference=args.reference,
                         baseline_responses=baseline, **kw)
    _print_result(res)
    print(f"wrote {out / 'eval' / (res['label'] + '.json')}", file=sys.stderr)
    return 0
