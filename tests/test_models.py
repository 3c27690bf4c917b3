"""Loading the embedded model: the GGUF file is parsed once per load, with the same result as transformers' own
three parses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deltalearn import models


def _tiny_gguf(path):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_parse_gguf_once_memoizes_inside_and_restores_after(tmp_path):
    import gguf

    f = tmp_path / "t.gguf"
    _tiny_gguf(f)
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    arch = gguf.MODEL_ARCH.LLAMA
    with models._parse_gguf_once():
        r1, r2 = gguf.GGUFReader(f), gguf.GGUFReader(str(f))
        assert r1 is r2  # one parse per file, whatever form the path takes
        assert [t.name for t in r1.tensors] == ["token_embd.weight"]
        assert np.array_equal(np.asarray(r1.tensors[0].data).reshape(3, 4), np.arange(12).reshape(3, 4))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.GGUFReader is reader_cls and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(f) is not gguf.GGUFReader(f)
    with pytest.raises(RuntimeError), models._parse_gguf_once():  # restored on errors too
        raise RuntimeError
    assert gguf.GGUFReader is reader_cls


@pytest.mark.slow
def test_embedded_model_loads_identically_with_one_parse(tmp_path, monkeypatch):
    """The de-quantized SmolLM2 written with one parse equals transformers' plain load: weights, tokenizer, config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("DELTALEARN_CACHE", str(tmp_path))
    fast = models.local_folder("smollm2-135m")
    src = models.resolve("smollm2-135m")
    gg = Path(src.gguf_file)
    plain_tok = AutoTokenizer.from_pretrained(str(gg.parent), gguf_file=gg.name)
    plain = AutoModelForCausalLM.from_pretrained(str(gg.parent), gguf_file=gg.name, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(fast, dtype=torch.float32)
    a, b = plain.state_dict(), loaded.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    tok = AutoTokenizer.from_pretrained(fast)
    text = "**Plan**\nStep one: mix 2 cups.\n"
    assert tok(text)["input_ids"] == plain_tok(text)["input_ids"] and len(tok) == len(plain_tok)


def test_a_misspelled_or_unreachable_model_fails_at_once(monkeypatch, tmp_path):
    """`smollm2-135` is a typo, not a hub id: an error with a did-you-mean before any hub call; a real-looking hub id
    with the hub unreachable fails in seconds, not after transformers' retries (issue 17)."""
    import subprocess
    import sys
    import time

    with pytest.raises(models.UnknownModelError, match="unknown model 'smollm2-135'; did you mean 'smollm2-135m'"):
        models.resolve("smollm2-135")
    assert models.resolve("gpt2").kind == "hub"  # an org-less hub id nothing local resembles is left to the hub
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(models.UnknownModelError, match="hub is unreachable from here"):
        models.load_tokenizer("someorg/not-cached-model")  # the loaders check before transformers is asked
    t = time.time()
    with pytest.raises(models.UnknownModelError, match="hub is unreachable from here"):
        models.check_available("someorg/not-cached-model")
    assert time.time() - t < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.UnknownModelError, match=r"offline \(HF_HUB_OFFLINE\)"):
        models.check_available("someorg/not-cached-model")
    # the CLI: rc 2 and the did-you-mean, at once; and a dry run flags it instead of "size unknown"
    t = time.time()
    p = subprocess.run([sys.executable, "-m", "deltalearn.cli", "generate", "--models", "smollm2-135", "--prompts",
                        "builtin:sections_prompts", "--limit", "1", "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "did you mean 'smollm2-135m'" in p.stderr and len(p.stderr.splitlines()) == 1
    assert time.time() - t < 60
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nprompts: {path: 'builtin:sections_prompts', limit: 4}\n"
                      "generate: {models: [smollm2-135m, smollm2-135]}\npair: {rule: ladder}\n"
                      "train: {model: smollm2-135m, batch_size: 2, micro_batch_size: 2}\n")
    p = subprocess.run([sys.executable, "-m", "deltalearn.cli", "run", str(recipe), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "did you mean 'smollm2-135m'" in p.stderr
