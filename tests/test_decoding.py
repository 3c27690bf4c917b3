"""Greedy is the same greedy on every backend: a model whose generation_config.json ships a repetition penalty
(Qwen2.5-Instruct ships 1.05) decodes exactly as the same model without it, through the transformers backend and
through the OpenAI backend against the real `python -m deltalearn.serve` (which, like a vLLM server, fills a
field a request omits from the model's generation_config.json). The decoding fields are recorded in the sidecar
and checked on resume."""

import json
import shutil

import pytest
from conftest import serve

from deltalearn.generate import (chat_completion, decoding_fields, generate_responses, generation_config_fields,
                                 meta_path)
from deltalearn.io import DataError

PROMPTS = [{"id": f"p{i}", "prompt": p} for i, p in enumerate([
    "List three colors.", "Write a haiku about the sea.", "What is the capital of France? Explain.",
    "Give me two tips for sleeping well."])]
N = 40


@pytest.fixture(scope="module")
def penalty_dir(smollm2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pen") / "smollm2-penalty"
    shutil.copytree(smollm2_dir, out)
    cfg = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**cfg, "repetition_penalty": 1.05}))
    return str(out)


@pytest.fixture(scope="module")
def penalty_server(penalty_dir):
    yield from serve(penalty_dir)


def _texts(rows):
    return [r["response"] for r in rows]


@pytest.mark.slow  # ~4 min on the shared 2-core machine (four greedy passes of SmolLM2 + a server)
def test_a_shipped_repetition_penalty_does_not_change_greedy_on_any_backend(smollm2_dir, penalty_dir,
                                                                            penalty_server, tmp_path):
    plain = _texts(generate_responses(smollm2_dir, PROMPTS, max_new_tokens=N, precision="fp32", progress=False))
    local = generate_responses(penalty_dir, PROMPTS, tmp_path / "local.jsonl", max_new_tokens=N, precision="fp32",
                               progress=False)
    assert _texts(local) == plain
    served = generate_responses(penalty_dir, PROMPTS, tmp_path / "served.jsonl", backend="openai",
                                base_url=penalty_server, max_new_tokens=N, progress=False, concurrency=4)
    assert _texts(served) == plain
    # the server does apply the model's penalty to a request that omits the field (as vLLM's server does), so the
    # equality above is the explicit neutral fields' doing
    omitted = [chat_completion(penalty_server, {"model": penalty_dir, "messages": [{"role": "user", "content":
                                                p["prompt"]}], "max_tokens": N, "temperature": 0})
               ["choices"][0]["message"]["content"] for p in PROMPTS]
    assert omitted != plain
    # recorded, and a resume under other decoding fields is refused
    meta = json.loads(meta_path(tmp_path / "local.jsonl").read_text())
    assert meta["decoding"] == decoding_fields(0.0, 1.0) == {"temperature": 0.0, "top_p": 1.0, "top_k": 0,
                                                             "min_p": 0.0, "repetition_penalty": 1.0}
    meta["decoding"]["repetition_penalty"] = 1.05
    meta_path(tmp_path / "local.jsonl").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="decoding: file has .*'repetition_penalty': 1.05"):
        generate_responses(penalty_dir, PROMPTS + [{"id": "new", "prompt": "One more."}], tmp_path / "local.jsonl",
                           max_new_tokens=N, precision="fp32", progress=False)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_the_generation_config_is_valid_for_transformers(temperature):
    """Greedy once set the sampling-only warpers (top_k 0, min_p 0.0), which transformers refuses in strict
    validation and warns about ("not valid and may be ignored") on every greedy call. Sampling keeps them all."""
    from transformers import GenerationConfig

    fields = generation_config_fields(decoding_fields(temperature, 0.9), max_new_tokens=8, pad=0, eos=1)
    GenerationConfig(**fields).validate(strict=True)
    sampled = {"top_p", "top_k", "min_p"} <= fields.keys()
    assert sampled == (temperature > 0) and fields["do_sample"] == (temperature > 0)
    assert fields["repetition_penalty"] == 1.0  # acts in greedy too, so always explicit
