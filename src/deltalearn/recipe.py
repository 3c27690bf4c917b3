"""The recipe: one typed YAML schema for a whole run, validated before any work starts.

A recipe is plain dataclasses. `load_recipe(path, overrides)` reads YAML, applies `--set a.b=value`
overrides, checks every key and type (unknown keys are errors with a did-you-mean), and only then fills in
loss-specific defaults, so `--set train.loss=dpo_norm` gets dpo_norm's beta rather than keeping DPO's
(a bug the rlhf-book review caught in another toolkit).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A recipe or option a person must fix. The message names the key and says what is allowed."""


# ---------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------

LossType = Literal["dpo", "dpo_norm", "simpo", "ipo", "sft"]

# Per-loss defaults, applied after overrides. dpo_norm compares per-token *mean* log-probs, whose margins are
# ~1/length of DPO's, so its beta is ~50x larger (paper & Tulu 3: 5). SimPO: beta 2-10, gamma/beta ~0.5.
DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "dpo_norm": 5.0, "simpo": 2.0, "ipo": 0.1, "sft": 0.0}
LENGTH_NORMALIZED = ("dpo_norm", "simpo")


@dataclass
class PromptsConfig:
    path: Optional[str] = None
    """Prompt file (.jsonl/.json/.parquet/.csv), a folder saved with `datasets.save_to_disk`, or
    `builtin:NAME` for the prompt sets the package ships."""
    dataset: Optional[str] = None
    """A hub dataset name (needs network); used when `path` is empty."""
    split: Optional[str] = None
    """A hub dataset's split (default train), or the value of a prompt file's `split` column to keep. Default for
    a file with a `split` column: `train` for generation, `eval` (held-out) for evaluation; a file without one
    gives every row."""
    column: str = "prompt"
    """Column holding the prompt: a string, or a list of chat messages."""
    id_column: Optional[str] = None
    """Column with a stable prompt id; when empty the id is a hash of the prompt's content."""
    limit: Optional[int] = None
    """Use only the first N prompts (after de-duplication)."""


@dataclass
class GenerateConfig:
    models: list[str] = field(default_factory=list)
    """Models to generate with: hub ids, local folders, .gguf files, `smollm2-135m`, or `lab:RUNG`."""
    backend: Literal["transformers", "openai", "vllm"] = "transformers"
    """transformers: in process; openai: a served model at `base_url`; vllm: vLLM in process (GPU)."""
    base_url: Optional[str] = None
    """For backend=openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."""
    max_new_tokens: int = 512
    """Longest response; one that hits it is marked truncated (and dropped by `pair.drop_truncated`)."""
    temperature: float = 0.0
    """0 means greedy (the paper's setting)."""
    top_p: float = 1.0
    """Nucleus sampling, with temperature > 0."""
    batch_size: int = 16
    """Prompts per generation batch."""
    system_prompt: Optional[str] = None
    """A system message put before every prompt."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 where the device has fast bf16 (AMX CPUs, Ampere+ GPUs), else fp32."""
    seed: int = 0
    """Sampling seed."""
    concurrency: int = 64
    """backend=openai: requests in flight at once (a served 70B needs dozens to keep its batch full)."""
    tensor_parallel_size: int = 1
    """backend=vllm: GPUs per engine (the authors generated with 8)."""


@dataclass
class PairConfig:
    rule: Literal["ladder", "self_vs_weaker", "utility", "judge", "columns", "corrupt"] = "ladder"
    """How chosen and rejected are picked: bigger model (ladder), the student over a weaker model, a utility's
    or a judge's score, two named columns, or a response over its corrupted copy (corrupt)."""
    chosen: Optional[str] = None
    """rule=columns: the chosen column (a model name in the generations or a wide-dataset column); rule=corrupt:
    the chosen set (default: the only one)."""
    rejected: Optional[str] = None
    """rule=columns: the rejected column; rule=corrupt: the set whose corrupted copy is rejected (default:
    chosen)."""
    sizes: dict[str, float] = field(default_factory=dict)
    """rule=ladder: model -> size (parameters or any monotone proxy); read from the model when empty."""
    adjacent: bool = True
    """rule=ladder: only next-smaller rungs (the paper's recipe); False pairs every bigger>smaller."""
    student: Optional[str] = None
    """rule=self_vs_weaker: the student's own generations are the chosen side."""
    weaker: Optional[str] = None
    """rule=self_vs_weaker: the weaker model whose generations are rejected."""
    utility: Optional[str] = None
    """rule=utility: name of a utility mu(x, y) (e.g. bold_sections, exact_answer)."""
    min_margin: float = 0.0
    """rule=utility/judge: keep a pair only if mu(chosen) - mu(rejected) > min_margin."""
    judge: Optional[str] = None
    """rule=judge: the judge model (any loadable model, or the openai backend's model name)."""
    judge_base_url: Optional[str] = None
    """rule=judge: score through an OpenAI-compatible server at this URL (judge = the server's model name)."""
    control: Literal["none", "reverse", "tie"] = "none"
    """Paper controls: reverse swaps chosen and rejected; tie pairs two responses of equal quality."""
    drop_truncated: bool = True
    """Drop pairs where either response hit max_new_tokens (cutting one side changes the delta)."""
    seed: int = 0
    """Seed of the tie control's orientation; rule=corrupt: hashed with each prompt id to seed its corruption."""
    corruption: Optional[str] = None
    """rule=corrupt: wrong_items, student_wrong_items, drop_sentence, shuffle_sentences, truncate, or a
    module:function of your own (deltalearn.corruptions)."""
    strength: float = 1.0
    """rule=corrupt: how much the corruption breaks (items / sentences for the counting ones, the fraction of
    words cut for truncate); 0 is the identity, the zero-delta control."""
    corruption_args: dict[str, str] = field(default_factory=dict)
    """rule=corrupt: extra inputs of the corruption, e.g. wrong_values: a JSON file key -> the student's most
    likely wrong value (student_wrong_items)."""


@dataclass
class LoraConfig:
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""


@dataclass
class TrainConfig:
    model: Optional[str] = None
    """The model to tune (the student / policy). Also the reference, unless `reference` is set."""
    reference: Optional[str] = None
    """Reference model; default: the starting policy (with LoRA: the base with adapters off)."""
    loss: LossType = "dpo_norm"
    """dpo, dpo_norm (DPO on per-token mean log-probs: the paper's and Tulu 3's), simpo, ipo, or sft (on the
    chosen side)."""
    beta: Optional[float] = None
    """Default per loss: dpo 0.1, dpo_norm 5, simpo 2, ipo 0.1."""
    gamma_beta_ratio: float = 0.5
    """SimPO's target margin gamma, as a fraction of beta."""
    label_smoothing: float = 0.0
    """Conservative DPO (cDPO) label smoothing; 0 is plain DPO."""
    nll_coef: float = 0.0
    """Weight of an extra NLL term on the chosen response (0 in the paper's runs)."""
    lr: float = 5e-7
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at min_lr_ratio x lr."""
    warmup_ratio: float = 0.03
    """Linear warmup over this fraction of the steps."""
    epochs: int = 1
    """Passes over the pairs (unless max_steps is set)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (default: the whole data for `epochs`)."""
    batch_size: int = 32
    """Global batch size in pairs per optimizer step (paper: 32)."""
    micro_batch_size: int = 4
    """Pairs per forward pass; gradient accumulation = batch_size / (micro_batch_size x processes)."""
    max_len: int = 2048
    """Max tokens of prompt + response; both sides of a pair are cut by the same rule."""
    max_pairs: Optional[int] = None
    """Train on only the first N pairs."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast where the device has fast bf16 (AMX CPUs, Ampere+ GPUs), fp32 master weights."""
    ref_cache: bool = True
    """Compute reference log-probs once, cache them on disk, and free the reference model."""
    ref_cache_dir: Optional[str] = None
    """Where caches live (shared across runs); default: ~/.cache/deltalearn/ref_logps."""
    lora: Optional[LoraConfig] = None
    """Train LoRA adapters instead of every weight (a mapping of `train.lora.*`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower steps."""
    compile: Union[Literal["auto"], bool] = "auto"
    """torch.compile each decoder layer. auto: under bf16, for models of 50M+ parameters and runs of 100k+ trained
    tokens, in one process without checkpointing or LoRA (where it was measured to pay back its compilation)."""
    save_every: int = 0
    """Save a resumable checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Keep only the newest N complete checkpoints (0: all). 2 by default: at 8B a checkpoint with Adam state is
    ~100 GB, and the one before the newest is what --fallback-checkpoint resumes from if the newest is corrupt."""
    log_every: int = 1
    """Write a metrics.jsonl row every N steps."""
    log_with: list[str] = field(default_factory=list)
    """Extra trackers through accelerate, e.g. [tensorboard] or [wandb]; metrics.jsonl is always written."""
    seed: int = 0
    """Seed of the data order (and of LoRA's initialization)."""
    trust_remote_code: bool = False
    """Allow a hub model's own modelling code (transformers' trust_remote_code)."""
    shuffle: bool = True
    """Shuffle the pairs each epoch (seeded); False keeps file order."""
    truncation: Literal["cut", "eos_at_cut"] = "cut"
    """A sequence over max_len, and a response cut at generation time: `cut` keeps the start of the response and
    trains no EOS after a cut (EOS after a cut-off answer teaches stopping mid-sentence); `eos_at_cut` is the reference
    (OpenRLHF): every response ends with EOS, one over max_len is cut at max_len with its last token made EOS, and a
    prompt must leave 3 tokens. The paper recipes use eos_at_cut."""
    chosen_key: Optional[str] = None
    """Pairs files in the released wide layout (one conversation column per model): the chosen column, e.g.
    `qwen-2.5-3b-instruct`; its messages before the last are the prompt. Unset: a `chosen` column."""
    rejected_key: Optional[str] = None
    """The rejected column of a wide pairs file (with chosen_key), e.g. `qwen-2.5-1.5b-instruct`."""
    padding_free: bool = False
    """Concatenate each micro-batch's sequences into one row, attention confined to each sequence: no pad tokens are
    computed. Same log-probs as the padded batch (fp32: to 1e-5); reference pass too."""
    share_prompt: bool = False
    """Run each pair as prompt + chosen + rejected in one sequence (rejected attends to the prompt, not to chosen):
    the prompt is computed once instead of twice. Same log-probs; combines with padding_free."""
    tracker_project: Optional[str] = None
    """The trackers' project (W&B project, TensorBoard folder); default: the recipe's run name (for `deltalearn
    train`, the --out folder's name). W&B's entity comes from WANDB_ENTITY."""
    tracker_run_name: Optional[str] = None
    """The run's name in the trackers; default: the arm's name (for `deltalearn train`, the --out folder's)."""
    save_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """dtype of the final model/ weights. auto: bf16 when trained under bf16 (the form the model is used in, half
    the size), fp32 when trained in fp32. Recorded in train_summary.json and the model card."""


@dataclass
class EvalConfig:
    prompts: Optional[PromptsConfig] = None
    """Held-out prompts for generation-based evals."""
    utilities: list[str] = field(default_factory=list)
    """Utilities mu(x, y) to average over greedy responses (e.g. bold_sections, exact_answer)."""
    max_new_tokens: int = 256
    """Longest greedy response."""
    batch_size: int = 16
    """Prompts per generation batch."""
    no_repeat_ngram_size: int = 0
    """n > 0: greedy eval answers never repeat n tokens in a row, the prompt included (transformers'
    `no_repeat_ngram_size`), a guard against the repetition loops of small models (one header line 20 times),
    which a count metric scores as structure. The same for every model evaluated; 0 = off. Transformers backend."""
    pairs: Optional[str] = None
    """Held-out pairs for preference accuracy and reward margin."""
    judge: Optional[str] = None
    """Judge model for pairwise win rate against the base model (position-swapped)."""
    lm_eval_tasks: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks (needs the [eval] extra), or `preset:tulu3-dev`."""
    system_prompt: Optional[str] = None
    """A system message put before every eval prompt."""


@dataclass
class Arm:
    """One arm of an experiment: a name plus overrides of the recipe's pair/train sections."""

    name: str = ""
    """The arm's name: its folder under arms/ and its label in the report."""
    pair: dict[str, Any] = field(default_factory=dict)
    """Overrides of the recipe's `pair` section for this arm (e.g. {control: reverse})."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of the recipe's `train` section for this arm (e.g. {loss: sft})."""


@dataclass
class Recipe:
    name: str = "run"
    """The run's name: its folder runs/NAME and its title in the report."""
    kind: Literal["pipeline", "sections", "lab", "sweep"] = "pipeline"
    """pipeline: prompts -> generate -> pair -> train -> eval; sections / lab / sweep: the paper's experiments."""
    output_dir: Optional[str] = None
    """Default: runs/NAME."""
    seed: int = 0
    """Seed of prompt order and the sections/lab experiments' draws."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    arms: list[Arm] = field(default_factory=list)
    experiment: dict[str, Any] = field(default_factory=dict)
    """Experiment-specific settings (kind=sections/lab/sweep), validated by that experiment's module."""
    notes: str = ""
    """Free text, kept in the manifest."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


# ---------------------------------------------------------------------------------------------------------
# Building dataclasses from dicts, with errors a person can act on
# ---------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{where} key"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 5e-7 as a string; accept it
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            hint = hf_name_hint(str(key)) or hint
            raise ConfigError(f"unknown key '{path}'{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


# TRL / transformers TrainingArguments names -> this recipe's key, for the did-you-mean of a TRL user's habits.
HF_NAMES: dict[str, str] = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "per_device_train_batch_size":
    "train.micro_batch_size", "gradient_accumulation_steps": "train.batch_size (the global batch; accumulation "
    "is batch_size / (micro_batch_size x processes))", "max_length": "train.max_len", "max_prompt_length":
    "train.max_len (prompt + response)", "max_completion_length": "train.max_len (prompt + response)",
    "max_grad_norm": "train.grad_clip", "loss_type": "train.loss", "report_to": "train.log_with",
    "model_name_or_path": "train.model", "ref_model": "train.reference", "rpo_alpha": "train.nll_coef",
    "logging_steps": "train.log_every", "save_steps": "train.save_every", "adam_beta1": "train.adam_betas",
    "adam_beta2": "train.adam_betas", "bf16": "train.precision", "fp16": "train.precision (bf16 or fp32)",
    "warmup_steps": "train.warmup_ratio (a fraction of the steps)", "lr_scheduler_type":
    "train.min_lr_ratio (the schedule is warmup + cosine)", "run_name": "train.tracker_run_name",
    "project": "train.tracker_project", "use_peft": "train.lora", "lora_r": "train.lora.r",
    "lora_alpha": "train.lora.alpha", "lora_dropout": "train.lora.dropout", "lora_target_modules":
    "train.lora.target_modules", "dataset_name": "--pairs ORG/DATASET", "output_dir": "--out or output_dir",
    "simpo_gamma": "train.gamma_beta_ratio", "cpo_alpha": "train.nll_coef", "beta": "train.beta",
    "warmup_ratio": "train.warmup_ratio", "max_steps": "train.max_steps", "weight_decay": "train.weight_decay",
    "label_smoothing": "train.label_smoothing", "seed": "train.seed or seed", "gradient_checkpointing":
    "train.gradient_checkpointing",
}


def hf_name_hint(key: str) -> str:
    """The did-you-mean for a TRL / transformers argument name, or '' when `key` is not one."""
    leaf = key.split(".")[-1]
    target = HF_NAMES.get(leaf)
    return f"; did you mean {target}? ('{leaf}' is the TRL/transformers name)" if target else ""


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.beta=5` -> (['train', 'beta'], 5). The value is read as YAML, so lists and numbers work."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.beta=5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text}: the key is empty")
    if not raw.strip():
        raise ConfigError(f"--set {text}: no value after '=' (write {key.strip()}=null to unset it)")
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not valid YAML ({problem})") from None


def blame(message: str, path: str | Path | None, overrides: list[str] | None) -> str:
    """Prefix a recipe error with where the bad value came from: the `--set` that wrote the key it names, or else
    the recipe file."""
    for text in reversed(overrides or []):
        key = text.split("=", 1)[0].strip()
        if key and (f"'{key}'" in message or message.startswith((f"{key}:", f"{key} ")) or f" {key}:" in message):
            return f"--set {text}: {message}"
    if path and not str(message).startswith(str(path)):
        return f"{path}: {message}"
    return message


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: '{k}' is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def resolve_train(cfg: TrainConfig, where: str = "train") -> TrainConfig:
    """Fill loss-specific defaults and check combinations. Called after overrides."""
    if cfg.beta is None:
        cfg.beta = DEFAULT_BETA[cfg.loss]
    if cfg.loss in LENGTH_NORMALIZED and 0 < cfg.beta < 1:
        warnings.warn(
            f"{where}.beta={cfg.beta} with loss={cfg.loss}: length-normalized losses compare per-token mean "
            "log-probs and need a beta around 2-10 (paper: 5); a DPO-scale beta barely moves the model.",
            stacklevel=2,
        )
    checks = [
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.batch_size > 0, "batch_size must be > 0"),
        (cfg.micro_batch_size > 0, "micro_batch_size must be > 0"),
        (cfg.batch_size % cfg.micro_batch_size == 0,
         f"batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size ({cfg.micro_batch_size})"),
        (cfg.max_len >= 8, "max_len must be >= 8"),
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be >= 1"),
        (0 <= cfg.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
        (0 <= cfg.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)"),
        (cfg.label_smoothing == 0 or cfg.loss in ("dpo", "dpo_norm", "simpo"),
         f"label_smoothing={cfg.label_smoothing} has no meaning for loss={cfg.loss} (only dpo, dpo_norm and "
         "simpo have a smoothed form); set it to 0"),
        (cfg.beta >= 0, "beta must be >= 0"),
        (cfg.loss == "sft" or cfg.beta > 0, f"beta must be > 0 for loss={cfg.loss}"),
        (cfg.nll_coef >= 0, "nll_coef must be >= 0"),
        (cfg.grad_clip >= 0, "grad_clip must be >= 0 (0 turns clipping off)"),
        (cfg.keep_checkpoints >= 0, "keep_checkpoints must be >= 0 (0 keeps every checkpoint)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{where}: {msg}")
    return cfg


def validate(recipe: Recipe) -> Recipe:
    if recipe.train.model is not None or recipe.kind != "pipeline":
        resolve_train(recipe.train)
    for i, arm in enumerate(recipe.arms):
        if not arm.name:
            raise ConfigError(f"arms[{i}]: every arm needs a name")
        # Each arm must itself be a valid recipe section once merged.
        merged_train = {**to_dict(recipe.train), **arm.train}
        merged_train["beta"] = arm.train.get("beta")  # loss-specific default again, unless the arm sets it
        resolve_train(from_dict(TrainConfig, merged_train, f"arms[{i}].train"), f"arms[{i}].train")
        from_dict(PairConfig, {**to_dict(recipe.pair), **arm.pair}, f"arms[{i}].pair")
    if recipe.eval.no_repeat_ngram_size < 0:
        raise ConfigError(f"eval.no_repeat_ngram_size must be >= 0 (0 = off), got {recipe.eval.no_repeat_ngram_size}")
    names = [a.name for a in recipe.arms]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"arms: duplicate arm names {sorted(dup)}")
    return recipe


def arm_configs(recipe: Recipe, arm: Arm) -> tuple[PairConfig, TrainConfig]:
    """The pair and train sections of one arm: the recipe's, with the arm's overrides on top."""
    train = {**to_dict(recipe.train), **arm.train}
    if "beta" not in arm.train and "loss" in arm.train:
        train["beta"] = None
    return (from_dict(PairConfig, {**to_dict(recipe.pair), **arm.pair}, f"arm {arm.name}.pair"),
            resolve_train(from_dict(TrainConfig, train, f"arm {arm.name}.train"), f"arm {arm.name}.train"))


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Recipe:
    """Read, override, type-check and resolve a recipe. Raises ConfigError naming the file and key."""
    if data is None:
        data = {}
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise ConfigError(f"recipe file not found: {p}")
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except UnicodeDecodeError as e:
                raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
            except (yaml.YAMLError, RecursionError) as e:
                raise ConfigError(f"{p}: not valid YAML: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: a recipe must be a YAML mapping at the top level")
    data = apply_overrides(dict(data), overrides or [])
    try:
        recipe = from_dict(Recipe, data)
        # An explicit beta in the YAML/overrides wins; otherwise the loss's default.
        return validate(recipe)
    except ConfigError as e:
        raise ConfigError(blame(str(e), path, overrides)) from None
