"""Shared fixtures: tiny real models built from a config (no network), and the embedded SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests use their own cache folder so they never touch a user's caches; the de-quantized SmolLM2 is reused
# across sessions to keep the suite fast.
os.environ.setdefault("DELTALEARN_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real SmolLM2-135M-Instruct (embedded GGUF), de-quantized once into the test cache."""
    from deltalearn.models import local_folder

    return local_folder("smollm2-135m")


def build_tiny_llama(out: Path, tokenizer_dir: str, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_dir)


def toy_pair_rows() -> list[dict]:
    """Small real preference pairs: the chosen answer is correct and formatted, the rejected one is not."""
    facts = [("What is the capital of France?", "The capital of France is **Paris**.", "It is Rome, I think."),
             ("How many legs does a spider have?", "A spider has **eight** legs.", "Six."),
             ("What color is the sky on a clear day?", "On a clear day the sky is **blue**.", "Green."),
             ("What is 2 + 3?", "2 + 3 = **5**.", "It is 6."),
             ("Name a mammal that can fly.", "The **bat** is a mammal that can fly.", "A penguin."),
             ("What do bees make?", "Bees make **honey**.", "Bees make milk."),
             ("What is the boiling point of water at sea level?", "Water boils at **100 °C** at sea level.",
              "About 50 degrees."),
             ("Which planet is known as the Red Planet?", "**Mars** is known as the Red Planet.", "Jupiter.")]
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in facts]


@pytest.fixture()
def toy_pairs() -> list[dict]:
    return toy_pair_rows()


def chromium() -> str | None:
    """A headless-capable Chromium on PATH (`make chromium` installs Debian's), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium not installed (make chromium)")


def render_in_chromium(page: Path) -> tuple[str, int, int]:
    """(DOM, images, images decoded) of an HTML report rendered by headless Chromium: the report's own check
    script writes how many embedded images decoded (naturalWidth > 0) into data- attributes of the DOM."""
    import re
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", Path(page).as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-images-total="(\d+)"[^>]*data-images-decoded="(\d+)"', dom)
    assert m, dom[:2000]
    return dom, int(m.group(1)), int(m.group(2))


def serve(model: str, python: str = sys.executable):
    """A real OpenAI-compatible server (deltalearn.serve) for `model` on 127.0.0.1 in its own process: a generator
    for a fixture, yielding its base URL and stopping it afterwards."""
    proc = subprocess.Popen([python, "-m", "deltalearn.serve", "--model", model, "--port", "0", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        pytest.fail(f"server did not start: {line}{proc.stderr.read()}")
    yield line.split(" on ")[1].strip()
    proc.terminate()
    proc.wait(timeout=30)
