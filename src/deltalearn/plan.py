"""Dry-run planning: what a recipe will do and what it will cost, without loading any model.

`plan(recipe)` checks that the stages fit together (a pairing rule has the models it names, the loss has what it
needs) and estimates compute with the usual dense-transformer counts (Kaplan et al. 2020; Chinchilla appendix):

- generation: 2 * N * tokens (prefill + decode; each token one forward pass),
- training: 6 * N * tokens for the policy (forward + backward) plus 2 * N * tokens for one reference forward pass
  (the reference log-probs are computed once and cached, so epochs do not repeat it).

These ignore attention's context-length term (a few percent at 2k tokens for 1B+ models) and padding, so treat them
as lower bounds. GPU-hours divide by a stated peak and utilization; decode is memory-bound, hence its lower default.

Parameter counts come from the published configs of the hub models (there is no hub on a dry run); local folders and
`lab:` rungs are counted from their config.json on the meta device (no weights are read).

The main recipe's claim (paper, "Main recipe"; slide "FLOPs reduction ~6% of original") is checked for recipes on
the Tulu 3 preference prompts: see `tulu3_comparison`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from deltalearn.recipe import ConfigError, Recipe, arm_configs, to_dict

# Parameters of hub models (from each model's published config / safetensors index). Keys are normalized names
# (see `_norm`): organisation dropped, lower case, chat/instruct/SFT suffixes dropped (same weights shape).
KNOWN_PARAMS: dict[str, int] = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-72b": 72_706_203_648,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-tulu-3-8b": 8_030_261_248,  # Llama-3.1-8B architecture
    "olmo-2-1124-7b": 7_298_617_344,
    "smollm2-135m": 134_515_008,
}

# Rows of hub prompt sets the shipped recipes use (counted where the hub is reachable; here they are facts).
KNOWN_PROMPTS: dict[str, tuple[int, str]] = {
    "allenai/llama-3.1-tulu-3-8b-preference-mixture":
        (265_000, "Tulu 3 8B preference prompts: ~265k unique prompts (paper); the dataset card lists 271,409 rows"),
    "huggingfaceh4/ultrafeedback_binarized": (61_135, "UltraFeedback binarized, train_prefs split"),
}


@dataclass(frozen=True)
class Hardware:
    """The accelerator the GPU-hour estimates assume. Peak is dense bf16 without sparsity."""

    name: str = "H100 SXM"
    peak_tflops: float = 989.0
    train_mfu: float = 0.20
    """Model FLOPs utilization of DPO training: published DPO runs of 7-8B models on H100 measure ~17-22%
    (open-instruct PRs #1466, #1467); 40% is pretraining-class and would halve the GPU-hours a user pays."""
    generate_mfu: float = 0.15
    """Batched greedy decode (vLLM) is memory-bound: a much lower share of peak than training."""


TRAIN_MFU_SOURCE = ("published DPO MFU at 7-8B on H100 is ~17-22% (open-instruct PRs #1466, #1467); set "
                    "--train-mfu to your own measurement")

# Assumed mean token counts when the data are not on disk yet. Stated in every plan.
DEFAULT_PROMPT_TOKENS = 256
DEFAULT_RESPONSE_TOKENS = 512


def _norm(name: str) -> str:
    n = name.rstrip("/").split("/")[-1].lower()
    for suffix in ("-instruct", "-sft", "-dpo", "-chat", "-hf"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    return n.removeprefix("meta-")


def model_params(name: str) -> tuple[Optional[int], str]:
    """(parameters or None, where the number came from). Never loads weights."""
    key = _norm(name)
    if key in KNOWN_PARAMS:
        return KNOWN_PARAMS[key], "known size"
    from deltalearn.models import UnknownModelError, resolve

    try:
        src = resolve(name)
    except UnknownModelError as e:  # a misspelled name: the dry run's job is to catch it
        raise ConfigError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a missing lab rung or folder is reported in the plan, not fatal
        return None, f"unknown ({e})"
    if src.kind == "folder":
        try:
            return _count_from_config(Path(src.path)), "counted from config.json"
        except Exception as e:  # noqa: BLE001
            return None, f"unknown (could not read {src.path}/config.json: {e})"
    if src.kind == "gguf":
        return None, "unknown (GGUF file; size known only after loading)"
    return None, "unknown (hub model not in the known-size table)"


def _count_from_config(folder: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def _prompt_count(recipe: Recipe) -> tuple[Optional[int], str]:
    p = recipe.prompts
    n: Optional[int] = None
    source = ""
    if p.path:
        n, source = _count_local_prompts(p.path)
    elif p.dataset:
        known = KNOWN_PROMPTS.get(p.dataset.lower())
        if known:
            n, source = known
        else:
            source = f"hub dataset {p.dataset}: size known only at run time"
    else:
        source = "no prompts configured"
    if p.limit is not None:
        n = p.limit if n is None else min(n, p.limit)
        source += f"; limit {p.limit}"
    return n, source


def _count_local_prompts(path: str) -> tuple[Optional[int], str]:
    if path.startswith("builtin:"):
        try:
            from importlib.resources import files

            name = path.split(":", 1)[1]
            f = files("deltalearn") / "data" / f"{name}.jsonl"
            n = sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
            return n, f"{path} ({n} rows)"
        except Exception:  # noqa: BLE001
            return None, f"{path}: built-in set, size known at run time"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"prompts.path: file not found: {p}")
    if p.is_file() and p.suffix == ".jsonl":
        n = sum(1 for line in p.open(encoding="utf-8") if line.strip())
        return n, f"{p} ({n} rows)"
    from deltalearn.io import read_table

    n = len(read_table(p))
    return n, f"{p} ({n} rows)"


def _pairs_per_prompt(pair_cfg, models: list[str]) -> int:
    """How many pairs one prompt yields under a rule (before filtering)."""
    if pair_cfg.rule == "ladder":
        k = len(models)
        return max(0, (k - 1) if pair_cfg.adjacent else k * (k - 1) // 2)
    return 1


def _arm_list(recipe: Recipe):
    """(name, pair config, train config, pairs per prompt) for each training run the recipe implies."""
    g = recipe.generate
    if (recipe.kind == "sweep" and recipe.pair.rule == "ladder" and not recipe.pair.adjacent
            and all(m in recipe.pair.sizes for m in g.models)):
        from deltalearn.sweep import expand_sweep  # the arms `deltalearn sweep` trains, per-pair overrides included

        return [(a.name, *arm_configs(recipe, a), 1) for a in expand_sweep(recipe).arms]
    if recipe.kind == "sweep" and not recipe.arms and recipe.pair.rule == "ladder" and not recipe.pair.adjacent:
        # A sweep trains one arm per chosen>rejected pair of the ladder, each on its own preference set.
        sizes = {m: recipe.pair.sizes.get(m) or model_params(m)[0] or 0 for m in g.models}
        ladder = sorted(g.models, key=lambda m: -sizes[m])
        from deltalearn.sweep import arm_name  # the names `deltalearn sweep` gives the arms

        return [(arm_name(c, r), recipe.pair, recipe.train, 1) for i, c in enumerate(ladder) for r in ladder[i + 1:]]
    if not recipe.arms:
        return [("main", recipe.pair, recipe.train, _pairs_per_prompt(recipe.pair, g.models))]
    out = []
    if recipe.kind == "sections":
        from deltalearn.experiments import sections

        settings = sections.settings_from(recipe)
        if settings.habit_k is not None:  # the habit stage trains the student every arm starts from
            out.append(("habit", recipe.pair, sections.habit_config(recipe, settings), 1))
    for arm in recipe.arms:
        pair_cfg, train_cfg = arm_configs(recipe, arm)
        out.append((arm.name, pair_cfg, train_cfg, _pairs_per_prompt(pair_cfg, g.models)))
    return out


def _check_pipeline(recipe: Recipe) -> list[str]:
    """Problems a run would hit at its first stage; raised as one ConfigError."""
    errs = []
    models = recipe.generate.models
    pair = recipe.pair
    if not recipe.prompts.path and not recipe.prompts.dataset:
        errs.append("prompts: set prompts.path (a file or builtin:NAME) or prompts.dataset (a hub dataset)")
    if recipe.train.model is None:
        errs.append("train.model: the model to tune is not set")
    if recipe.generate.backend == "openai" and not recipe.generate.base_url:
        errs.append("generate.base_url: backend=openai needs the server's URL (e.g. http://127.0.0.1:8000/v1)")
    rules = [pair.rule] + [a.pair.get("rule") for a in recipe.arms if a.pair.get("rule")]
    if "ladder" in rules and len(models) < 2:
        errs.append(f"pair.rule=ladder needs at least two generate.models, got {models}")
    if pair.rule == "self_vs_weaker":
        for key in ("student", "weaker"):
            if not getattr(pair, key):
                errs.append(f"pair.{key}: rule=self_vs_weaker needs it")
            elif models and getattr(pair, key) not in models:
                errs.append(f"pair.{key}={getattr(pair, key)!r} is not among generate.models {models}")
    if pair.rule == "columns" and not (pair.chosen and pair.rejected):
        errs.append("pair.chosen / pair.rejected: rule=columns needs both column names")
    if pair.rule == "utility":
        if not pair.utility:
            errs.append("pair.utility: rule=utility needs a utility name (e.g. bold_sections)")
        else:
            from deltalearn.utility import get_utility

            try:
                get_utility(pair.utility)
            except ConfigError as e:
                errs.append(f"pair.utility: {e}")
    if pair.rule == "corrupt":
        from deltalearn.corruptions import check_strength, get_corruption

        try:
            check_strength(pair.corruption, get_corruption(pair.corruption), pair.strength)
        except ConfigError as e:
            errs.append(str(e))
    if pair.rule == "judge" and not pair.judge:
        errs.append("pair.judge: rule=judge needs a judge model")
    for u in recipe.eval.utilities:
        from deltalearn.utility import get_utility

        try:
            get_utility(u)
        except ConfigError as e:
            errs.append(f"eval.utilities: {e}")
    return errs


def pair_forward_tokens(seq_tokens: int, prompt_tokens: int, cfg) -> tuple[int, str]:
    """Tokens one pair runs through the model, and the layout's name: both sides (SFT: chosen only), the prompt
    once when `share_prompt` puts prompt + chosen + rejected in one sequence. Padding is not counted: a padded
    micro-batch adds the spread of its lengths (data-dependent; `padding_free` removes it), so without
    padding_free this is a lower bound."""
    sides = 1 if cfg.loss == "sft" else 2  # SFT trains on the chosen side only
    shared = getattr(cfg, "share_prompt", False) and sides == 2
    tokens = sides * seq_tokens - (min(prompt_tokens, seq_tokens) if shared else 0)
    layout = ("padding-free" if getattr(cfg, "padding_free", False) else "padded") + (", shared prompt" if shared
                                                                                       else "")
    return tokens, layout


def _train_flops(n_params: Optional[int], n_pairs: Optional[int], trained_pairs: Optional[int], seq_tokens: int,
                 cfg, prompt_tokens: int = 0) -> dict[str, Any]:
    """n_pairs: distinct pairs; trained_pairs: pairs seen by the optimizer (steps x batch_size)."""
    if n_params is None or n_pairs is None or trained_pairs is None:
        return {"policy_flops": None, "reference_flops": None, "total_flops": None}
    per_pair, _ = pair_forward_tokens(seq_tokens, prompt_tokens, cfg)
    tokens = trained_pairs * per_pair
    policy = 6 * n_params * tokens
    # Reference-free losses (SimPO, SFT) skip the reference pass; the others cache it once, over every pair.
    needs_ref = cfg.loss in ("dpo", "dpo_norm", "ipo")
    ref = 2 * n_params * (n_pairs * per_pair if cfg.ref_cache else tokens) if needs_ref else 0
    return {"tokens": tokens, "policy_flops": policy, "reference_flops": ref, "total_flops": policy + ref}


def checkpoint_disk_and_host_ram(params: Optional[int], train_cfg, steps: Optional[int]) -> dict[str, Any]:
    """Disk the run's checkpoints take and host RAM per rank, from how train.py saves and loads (estimates; bytes).

    A checkpoint holds the trainable weights in fp32 and Adam's two fp32 moments: 12 B per trainable parameter
    (DeepSpeed bf16 keeps bf16 weights besides its fp32 masters: ~14 B). `keep_checkpoints` of them stay on disk, plus
    the final model (4 B/param in fp32). Host RAM: every rank loads the fp32 policy (4 B/param) before the engine
    moves or shards it; at the final save the main process also holds the gathered full state dict (another 4 B/param).
    """
    if params is None or steps is None:
        return {"checkpoint_bytes": None, "checkpoints_kept": None, "host_ram_per_rank_bytes": None,
                "host_ram_rank0_save_bytes": None}
    trainable = params // 100 if train_cfg.lora is not None else params  # LoRA adapters: well under 1% of the model
    saves = (steps - 1) // train_cfg.save_every if train_cfg.save_every else 0
    kept = min(saves, train_cfg.keep_checkpoints) if train_cfg.keep_checkpoints else saves
    return {"checkpoint_bytes": 12 * trainable, "checkpoints_kept": kept, "final_model_bytes": 4 * params,
            "host_ram_per_rank_bytes": 4 * params, "host_ram_rank0_save_bytes": 8 * params}


def gpu_hours(flops: Optional[float], mfu: float, hw: Hardware) -> Optional[float]:
    if flops is None:
        return None
    return flops / (hw.peak_tflops * 1e12 * mfu) / 3600


# The Tulu 3 pipeline the paper compares against generated with strong models: 70B-class open models (Llama-3.1-70B,
# Qwen2.5-72B; also 405B and API models) over the same prompts (paper, "Main recipe"; slides: "Requires 70B+ models").
TULU3_STRONG_GENERATORS = {"Llama-3.1-70B-Instruct": 70_553_706_496, "Qwen2.5-72B-Instruct": 72_706_203_648}
PAPER_CLAIM = 0.06


def tulu3_comparison(gen_models: list[tuple[str, int]], n_prompts: int, tokens_per_response: int) -> dict[str, Any]:
    """Weak generation FLOPs against Tulu 3's strong generation on the same prompts and response lengths.

    Both pipelines produce one chosen and one rejected response per prompt. Tulu 3's are modelled as two responses
    from 70B-class generators (mean of TULU3_STRONG_GENERATORS). The ratio then depends only on parameter counts.
    `break_even_params` is the mean Tulu 3 generator size at which the ratio would equal the paper's ~6%.
    """
    ours_params = sum(n for _, n in gen_models)
    strong = sum(TULU3_STRONG_GENERATORS.values()) / len(TULU3_STRONG_GENERATORS)
    theirs_params = 2 * strong
    ours = 2 * ours_params * n_prompts * tokens_per_response
    theirs = 2 * theirs_params * n_prompts * tokens_per_response
    chosen_params = max(n for _, n in gen_models)
    return {
        "weak_generation_flops": ours,
        "tulu3_generation_flops": theirs,
        "ratio": ours / theirs,
        "chosen_only_ratio": chosen_params / strong,
        "paper_claim": PAPER_CLAIM,
        "break_even_params": ours_params / (2 * PAPER_CLAIM),
        "assumption": (f"Tulu 3: one chosen + one rejected response per prompt from 70B-class generators "
                       f"(mean {strong / 1e9:.1f}B: {', '.join(TULU3_STRONG_GENERATORS)}); same prompts and "
                       "response lengths as the weak recipe"),
    }


def plan(recipe: Recipe, *, hardware: Hardware = Hardware(), prompt_tokens: Optional[int] = None,
         response_tokens: Optional[int] = None) -> dict[str, Any]:
    """What `deltalearn run RECIPE` will do, and its compute, without loading a model. Raises ConfigError for a
    recipe whose stages do not fit together."""
    if recipe.kind in ("pipeline", "sweep"):
        errs = _check_pipeline(recipe)
        if errs:
            raise ConfigError(f"recipe '{recipe.name}': " + "; ".join(errs))

    g = recipe.generate
    prompt_tokens = prompt_tokens or DEFAULT_PROMPT_TOKENS
    response_tokens = response_tokens or min(g.max_new_tokens, DEFAULT_RESPONSE_TOKENS)
    n_prompts, prompt_source = _prompt_count(recipe)

    # Models and their sizes.
    names: list[str] = list(dict.fromkeys(
        [*g.models, *( [recipe.train.model] if recipe.train.model else []),
         *([recipe.train.reference] if recipe.train.reference else []),
         *([recipe.pair.judge] if recipe.pair.judge else []), *([recipe.eval.judge] if recipe.eval.judge else [])]))
    models = {}
    for n in names:
        params, src = model_params(n)
        roles = [r for r, ok in (("generate", n in g.models), ("train", n == recipe.train.model),
                                 ("reference", n == recipe.train.reference),
                                 ("judge", n in (recipe.pair.judge, recipe.eval.judge))) if ok]
        models[n] = {"params": params, "params_source": src, "roles": roles}

    # Generation: every prompt through every model (sections: the student's own answers, then one eval pass per run).
    gen_passes = [(m, n_prompts, m) for m in g.models]  # (label, prompts, the model whose size counts)
    if recipe.kind == "sections":
        gen_passes, n_prompts, prompt_source = _sections_generation(recipe, prompt_source)
    gen = []
    for m, n, sized_by in gen_passes:
        p = models[sized_by]["params"]
        flops = None if p is None or n is None else 2 * p * n * (prompt_tokens + response_tokens)
        gen.append({"model": m, "prompts": n, "flops": flops,
                    "gpu_hours": gpu_hours(flops, hardware.generate_mfu, hardware)})

    # Arms: the recipe's own train section, or one per arm.
    arms_out = []
    seq_tokens = min(prompt_tokens + response_tokens, recipe.train.max_len)
    for arm_name, pair_cfg, train_cfg, ppp in _arm_list(recipe):
        n_pairs = None if n_prompts is None else n_prompts * ppp
        if train_cfg.max_pairs is not None:
            n_pairs = train_cfg.max_pairs if n_pairs is None else min(n_pairs, train_cfg.max_pairs)
        # The trainer's own count (train.py): max_steps when set (it may run past one epoch), else whole
        # batches per epoch x epochs; every step trains one global batch.
        if train_cfg.max_steps is not None:
            steps = train_cfg.max_steps
        else:
            steps = None if n_pairs is None else (n_pairs // train_cfg.batch_size) * train_cfg.epochs
        trained_pairs = None if steps is None else steps * train_cfg.batch_size
        params = models.get(train_cfg.model, {}).get("params") if train_cfg.model else None
        if train_cfg.model and train_cfg.model not in models:
            params, src = model_params(train_cfg.model)
            models[train_cfg.model] = {"params": params, "params_source": src, "roles": ["train"]}
        flops = _train_flops(params, n_pairs, trained_pairs, seq_tokens, train_cfg, prompt_tokens)
        arms_out.append({
            "arm": arm_name, "rule": pair_cfg.rule, "control": pair_cfg.control, "loss": train_cfg.loss,
            "beta": train_cfg.beta, "lr": train_cfg.lr, "batch_size": train_cfg.batch_size,
            "epochs": train_cfg.epochs, "max_len": train_cfg.max_len, "model": train_cfg.model,
            "pairs_per_prompt": ppp, "pairs": n_pairs, "steps": steps, "lora": train_cfg.lora is not None,
            "layout": pair_forward_tokens(seq_tokens, prompt_tokens, train_cfg)[1],
            **flops, "gpu_hours": gpu_hours(flops["total_flops"], hardware.train_mfu, hardware),
            **checkpoint_disk_and_host_ram(params, train_cfg, steps),
        })

    stages = _stages(recipe, arms_out)
    total_gen = _sum([x["flops"] for x in gen])
    total_train = _sum([a["total_flops"] for a in arms_out])
    out: dict[str, Any] = {
        "name": recipe.name, "kind": recipe.kind, "run_dir": str(recipe.run_dir), "stages": stages,
        "prompts": {"count": n_prompts, "source": prompt_source},
        "models": models, "generation": gen, "arms": arms_out,
        "totals": {"generation_flops": total_gen, "train_flops": total_train,
                   "generation_gpu_hours": gpu_hours(total_gen, hardware.generate_mfu, hardware),
                   "train_gpu_hours": gpu_hours(total_train, hardware.train_mfu, hardware)},
        "assumptions": {"hardware": hardware.name, "peak_tflops": hardware.peak_tflops,
                        "train_mfu": hardware.train_mfu, "generate_mfu": hardware.generate_mfu,
                        "prompt_tokens": prompt_tokens, "response_tokens": response_tokens,
                        "train_seq_tokens": seq_tokens,
                        "flops": "generation 2*N*tokens; training 6*N*tokens + 2*N*tokens reference pass"},
        "eval": {k: v for k, v in to_dict(recipe.eval).items() if v not in (None, [], {})},
        "experiment": dict(recipe.experiment),
    }
    if (recipe.kind == "pipeline" and n_prompts and len(g.models) == 2 and all(models[m]["params"] for m in g.models)
            and recipe.prompts.dataset and "tulu-3" in recipe.prompts.dataset.lower()):
        out["tulu3_comparison"] = tulu3_comparison([(m, models[m]["params"]) for m in g.models], n_prompts,
                                                   prompt_tokens + response_tokens)
    from deltalearn.reference import format_comparison  # a paper recipe against the authors' runs

    out["reference"] = format_comparison(recipe)
    return out


def _sections_generation(recipe: Recipe, prompt_source: str) -> tuple[list[tuple[str, int, str]], int, str]:
    """The sections experiment's generation passes: the model's answers on the train prompts (y_k are cut from
    them), then greedy eval passes on the held-out prompts (the original model when eval_original, the student,
    every arm). Returns (passes, train prompts, source)."""
    from deltalearn.experiments import sections

    settings = sections.settings_from(recipe)
    if recipe.prompts.dataset:  # a hub dataset: a dry run loads nothing, so only the recipe's own counts are known
        n_train, n_habit, n_eval = settings.train_prompts, settings.habit_prompts, settings.eval_prompts
    else:
        n_train, n_habit, n_eval = (len(x) for x in sections.load_split_prompts(recipe, settings))
    m = recipe.train.model
    passes = [(m, n_train, m)]
    if settings.habit_k is not None and n_habit:
        passes.append((f"{m} (habit prompts)", n_habit, m))
    if settings.habit_k is not None and settings.eval_original:
        passes.append((f"{m} (eval)", n_eval, m))
    passes += [(f"{'student' if settings.habit_k is not None else m} (eval)", n_eval, m)]
    passes += [(f"arm {a.name} (eval)", n_eval, m) for a in recipe.arms]
    return passes, n_train, (f"{prompt_source}; {n_train or 'all'} train / {n_eval or 'all'} {settings.eval_split} "
                             "prompts used")


def _setting(v: Any) -> str:
    """A setting as a person writes it in YAML ({lr: 0.0001, max_steps: 8}), not as a Python dict repr."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_setting(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_setting(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _sum(values: list[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else float(sum(values))


def _stages(recipe: Recipe, arms: list[dict]) -> list[str]:
    d = recipe.run_dir
    if recipe.kind == "sections":
        habit = [a for a in arms if a["arm"] == "habit"]
        s = [f"prompts (train / {recipe.experiment.get('eval_split', 'eval')} split) -> {d}/prompts.jsonl",
             f"generate {recipe.train.model}'s greedy answers on the train prompts -> {d}/generations/base-train.jsonl"
             " (skipped when the prompt set already has the K_sections columns)",
             f"y_k columns (exactly k bold header lines) -> {d}/data/sections.jsonl"]
        if habit:
            s.append(f"habit stage: SFT on y_{recipe.experiment['habit_k']} (lr {habit[0]['lr']:g}) -> "
                     f"{d}/arms/habit/ (the student of every arm)")
        s.append(f"eval the student (base row) -> {d}/eval/base.json")
        s += [f"train arm '{a['arm']}' ({a['loss']}, lr {a['lr']:g}) and eval it -> {d}/arms/{a['arm']}/"
              for a in arms if a["arm"] != "habit"]
        return s + [f"table, bar chart -> {d}/results.json, {d}/sections.png", f"report -> {d}/report.html"]
    if recipe.kind not in ("pipeline", "sweep"):
        return [f"experiment kind={recipe.kind} -> {d}/ (results.json, arms/*, eval/*)", f"report -> {d}/report.html"]
    s = [f"prompts -> {d}/prompts.jsonl"]
    s += [f"generate {m} ({recipe.generate.backend}) -> {d}/generations/" for m in recipe.generate.models]
    adjacent = ", adjacent" if recipe.pair.rule == "ladder" and recipe.pair.adjacent else ""
    s.append(f"pair (rule={recipe.pair.rule}{adjacent}"
             f"{', control=' + recipe.pair.control if recipe.pair.control != 'none' else ''}) -> {d}/pairs/")
    if any(a["loss"] in ("dpo", "dpo_norm", "ipo") for a in arms):
        s.append("reference log-probs (computed once, cached on disk, reference model freed)")
    if len(arms) > 6:  # a sweep: one line, not 21
        s.append(f"train {len(arms)} arms ({', '.join(a['arm'] for a in arms[:2])}, ...) -> {d}/arms/<arm>/")
    else:
        s += [f"train arm '{a['arm']}' ({a['loss']}, beta {a['beta']}, lr {a['lr']:g}) -> {d}/arms/{a['arm']}/"
              for a in arms]
    ev = recipe.eval
    what = [*(f"utility {u}" for u in ev.utilities), *(["held-out pairs"] if ev.pairs else []),
            *([f"judge {ev.judge}"] if ev.judge else []), *(f"lm-eval {t}" for t in ev.lm_eval_tasks)]
    s.append(f"eval base + arms ({', '.join(what) or 'response length only'}) -> {d}/eval/")
    s.append(f"report -> {d}/report.html")
    return s


# ---------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------


def _si(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "unknown"
    for p, s in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.2f} {s}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _hours(h: Optional[float]) -> str:
    if h is None:
        return "unknown"
    return f"{h:,.1f} GPU-h" if h >= 0.1 else f"{h * 60:.1f} GPU-min" if h * 60 >= 0.1 else f"{h * 3600:.2f} GPU-s"


def format_plan(p: dict[str, Any]) -> str:
    a = p["assumptions"]
    lines = [f"Plan for recipe '{p['name']}' (kind={p['kind']}) -> {p['run_dir']}", "", "Stages:"]
    lines += [f"  {i}. {s}" for i, s in enumerate(p["stages"], 1)]
    lines += ["", "Models:"]
    for name, m in p["models"].items():
        size = f"{m['params'] / 1e9:.2f}B params" if m["params"] else "size " + m["params_source"]
        lines.append(f"  {name:<44} {size:<22} "
                     f"[{', '.join(m['roles'])}]")
    c = p["prompts"]["count"]
    lines += ["", f"Prompts: {'unknown' if c is None else f'{c:,}'} ({p['prompts']['source']})"]
    if p["generation"]:
        lines += ["", f"Generation ({a['prompt_tokens']} prompt + {a['response_tokens']} response tokens per prompt):"]
        for gg in p["generation"]:
            lines.append(f"  {gg['model']:<44} {_si(gg['flops'], 'FLOP'):>12}  {_hours(gg['gpu_hours'])}")
    lines += ["", "Training:"]
    shown = p["arms"] if len(p["arms"]) <= 6 else p["arms"][:2]
    for arm in shown:
        pairs = "unknown" if arm["pairs"] is None else f"{arm['pairs']:,}"
        steps = "unknown" if arm["steps"] is None else f"{arm['steps']:,}"
        model = arm["model"] or "(model chosen by the experiment)"
        lines.append(f"  {arm['arm']}: {model} {arm['loss']} beta={arm['beta']} lr={arm['lr']:g} "
                     f"batch={arm['batch_size']} epochs={arm['epochs']} max_len={arm['max_len']}"
                     f"{' LoRA' if arm['lora'] else ''} ({arm['layout']})")
        lines.append(f"      pairs {pairs} (rule={arm['rule']}, {arm['pairs_per_prompt']} per prompt"
                     f"{', control=' + arm['control'] if arm['control'] != 'none' else ''}), steps {steps}, "
                     f"{_si(arm['total_flops'], 'FLOP')} ({_si(arm['policy_flops'], 'FLOP')} policy + "
                     f"{_si(arm['reference_flops'], 'FLOP')} reference), {_hours(arm['gpu_hours'])}")
        if arm.get("checkpoint_bytes") is not None:
            lines.append(f"      disk: {arm['checkpoints_kept']} checkpoint(s) kept x "
                         f"{_si(arm['checkpoint_bytes'], 'B')} + final model {_si(arm['final_model_bytes'], 'B')}; host RAM per rank "
                         f"~{_si(arm['host_ram_per_rank_bytes'], 'B')} (main process at the final save "
                         f"~{_si(arm['host_ram_rank0_save_bytes'], 'B')})")
    if len(shown) < len(p["arms"]):
        rest = ", ".join(a["arm"] for a in p["arms"][len(shown):])
        lines.append(f"  ... and {len(p['arms']) - len(shown)} more arms ({rest})")
    t = p["totals"]
    lines += ["", f"Total: generation {_si(t['generation_flops'], 'FLOP')} ({_hours(t['generation_gpu_hours'])}), "
              f"training {_si(t['train_flops'], 'FLOP')} ({_hours(t['train_gpu_hours'])})",
              f"  at {a['hardware']} {a['peak_tflops']:g} TFLOP/s bf16 peak, {a['train_mfu']:.0%} utilization "
              f"training, {a['generate_mfu']:.0%} generation; {a['flops']} (lower bounds: no attention term, "
              "no padding)"]
    if a["train_mfu"] == Hardware.train_mfu:
        lines.append(f"  training MFU {Hardware.train_mfu:.0%}: {TRAIN_MFU_SOURCE}")
    if p.get("experiment"):
        lines += ["", f"Experiment settings (checked by the {p['kind']} experiment when it runs): "
                  + ", ".join(f"{k}={_setting(v)}" for k, v in p["experiment"].items())]
    if p.get("eval"):
        lines += ["", "Eval: " + ", ".join(f"{k}={_setting(v)}" for k, v in p["eval"].items())]
    if p.get("reference"):
        lines += ["", *p["reference"]]
    cmp_ = p.get("tulu3_comparison")
    if cmp_:
        lines += ["", "Weak generation vs Tulu 3's strong generation (same prompts, same response lengths):",
                  f"  this recipe {_si(cmp_['weak_generation_flops'], 'FLOP')} vs Tulu 3 "
                  f"{_si(cmp_['tulu3_generation_flops'], 'FLOP')}: {cmp_['ratio']:.1%} "
                  f"(chosen side alone: {cmp_['chosen_only_ratio']:.1%})",
                  f"  paper: ~{cmp_['paper_claim']:.0%} ('~10x reduction'). Consistent: against 70B-class "
                  f"generators the weak pair costs {cmp_['ratio']:.1%}, and ~{cmp_['paper_claim']:.0%} is what "
                  f"Tulu 3 generators averaging {cmp_['break_even_params'] / 1e9:.0f}B parameters per response "
                  "would give (its pool mixed 7B-405B open models with API models).",
                  f"  assumption: {cmp_['assumption']}"]
    return "\n".join(lines)


def dry_run(path: str, overrides: list[str] | None = None, **kw) -> str:
    """Load, validate and plan a recipe file; the text `deltalearn run RECIPE --dry-run` prints."""
    from deltalearn.recipe import load_recipe

    recipe = load_recipe(path, overrides)
    try:
        return format_plan(plan(recipe, **kw))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# CLI helpers: `deltalearn run RECIPE --dry-run` (pipeline) and `python -m deltalearn.plan RECIPE`
# ---------------------------------------------------------------------------------------------------------


def add_plan_args(p) -> None:
    """The estimate's knobs, for any command that prints a plan."""
    p.add_argument("--gpu", default=Hardware.name, help="accelerator name shown in the plan (default: H100 SXM)")
    p.add_argument("--gpu-peak-tflops", type=float, default=Hardware.peak_tflops,
                   help="dense bf16 peak of one GPU in TFLOP/s (H100 SXM 989, A100 312, H200 989)")
    p.add_argument("--train-mfu", type=float, default=Hardware.train_mfu, help="training utilization (0-1)")
    p.add_argument("--generate-mfu", type=float, default=Hardware.generate_mfu, help="generation utilization (0-1)")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help=f"mean prompt tokens (default {DEFAULT_PROMPT_TOKENS})")
    p.add_argument("--response-tokens", type=int, default=None,
                   help=f"mean response tokens (default min(max_new_tokens, {DEFAULT_RESPONSE_TOKENS}))")


def plan_kwargs(args) -> dict:
    for name in ("train_mfu", "generate_mfu"):
        v = getattr(args, name)
        if not 0 < v <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    if args.gpu_peak_tflops <= 0:
        raise ConfigError("--gpu-peak-tflops must be > 0")
    return {"hardware": Hardware(args.gpu, args.gpu_peak_tflops, args.train_mfu, args.generate_mfu),
            "prompt_tokens": args.prompt_tokens, "response_tokens": args.response_tokens}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m deltalearn.plan", description="dry-run plan of a recipe")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_plan_args(p)
    args = p.parse_args(argv)
    from deltalearn.recipe import load_recipe

    try:
        pl = plan(load_recipe(args.recipe, args.overrides), **plan_kwargs(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(pl, indent=2, default=str) if args.json else format_plan(pl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
