"""Padding-free packing and the shared-prompt forward (packing.py): the layout and its mask follow the rule written
out independently here; on real models (the tiny Llama and SmolLM2, fp32) per-sequence log-probs, their means and
the gradients equal the padded batch's; training with either lever (and both) gives the padded run's losses, starts
at ln 2 (bf16 too) and resumes exactly. Each exactness check is shown to catch a mask that lets one sequence see
another (a plain causal mask over a packed row, one flipped entry, a block whose prefix reaches the chosen side)."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltalearn import packing, refcache
from deltalearn.logps import ResponseLogProbs, collate
from deltalearn.models import load_model
from deltalearn.recipe import TrainConfig
from deltalearn.train import train

MODES = [(True, False), (False, True), (True, True)]  # (padding_free, share_prompt)
IDS = ["padding_free", "share_prompt", "both"]


def triples(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [(rnd(p), rnd(c), rnd(r)) for p, c, r in lengths]


LENGTHS = [(5, 7, 3), (9, 4, 6), (2, 5, 5), (6, 1, 8)]


def padded(pairs):
    return collate([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs], pad_id=0)


def assert_same(got: torch.Tensor, want: torch.Tensor, counts: torch.Tensor) -> None:
    """The issue's bar: sums and per-token means equal to 1e-5 (relative on sums of ~100 nats, where fp32 itself
    rounds at ~1e-5 absolute)."""
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got / counts, want / counts, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The layout, pure
# ---------------------------------------------------------------------------------------------------------


def labels(units, one_row: bool):
    """Per packed column: (unit, branch, position), written from the rule, not from packing.py's blocks."""
    rows = [list(enumerate(units))] if one_row else [[(i, u)] for i, u in enumerate(units)]
    out = {}
    for r, row in enumerate(rows):
        col = 0
        for ui, u in row:
            for i in range(len(u.prompt)):
                out[(r, col)] = (ui, 0, i)
                col += 1
            for b, resp in enumerate(u.responses, start=1):
                for i in range(len(resp)):
                    out[(r, col)] = (ui, b, len(u.prompt) + i)
                    col += 1
    return out


@pytest.mark.parametrize("padding_free, share_prompt", MODES + [(False, False)], ids=IDS + ["padded_rows"])
def test_layout_follows_the_rule(padding_free, share_prompt):
    pairs = triples(100, LENGTHS)
    k = len(pairs)
    units = packing.units_for_pairs(pairs, share_prompt=share_prompt)
    b = packing.pack(units, pad_id=0, one_row=padding_free)
    lab = labels(units, padding_free)
    mask = packing.dense_mask(b)[:, 0]
    rows, width = b.input_ids.shape
    for r in range(rows):
        for q in range(width):
            if (r, q) not in lab:  # padding: sees only itself (a softmax row may not be empty), nothing sees it
                assert mask[r, q].tolist() == [kk == q for kk in range(width)]
                assert not mask[r, :, q].logical_and(torch.arange(width) != q).any()
                continue
            uq, bq, pos = lab[(r, q)]
            assert int(b.position_ids[r, q]) == pos  # restart per unit; both responses continue from the prompt
            for kk in range(width):
                want = (r, kk) in lab and lab[(r, kk)][0] == uq and kk <= q and lab[(r, kk)][1] in (0, bq)
                assert bool(mask[r, q, kk]) == want, (r, q, kk)
    # every response token is scored once, predicted by the token before it in its own sequence
    assert b.counts().tolist() == [len(c) for _, c, _ in pairs] + [len(r) for *_, r in pairs]
    where = {v: key for key, v in lab.items()}
    for r, c, t, s in zip(b.pred_rows.tolist(), b.pred_cols.tolist(), b.targets.tolist(), b.slots.tolist()):
        unit, branch = (s % k, 1 + s // k) if share_prompt else (s, 1)
        u, pb, pos = lab[(r, c)]
        assert u == unit and pb in (0, branch)
        tr, tc = where[(unit, branch, pos + 1)]
        assert tr == r and int(b.input_ids[tr, tc]) == t
    assert len(b.targets) == sum(len(c) + len(r) for _, c, r in pairs)
    assert b.n_tokens == sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs)  # prompt counted per sequence


def test_shared_prompt_scores_the_first_rejected_token_from_the_prompt():
    (p, c, r), = triples(100, [(3, 4, 2)])
    b = packing.pack_pairs([(p, c, r)], pad_id=0, padding_free=True, share_prompt=True)
    assert b.input_ids[0].tolist() == p + c + r
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4]
    rejected = b.slots == 1
    assert b.pred_cols[rejected].tolist() == [2, 7]  # the prompt's last token, then the first rejected token
    assert b.targets[rejected].tolist() == r


# ---------------------------------------------------------------------------------------------------------
# Real models: log-probs and gradients equal the padded batch's
# ---------------------------------------------------------------------------------------------------------


def _model(folder):
    model, _ = load_model(folder, with_tokenizer=False)
    return model.float().train(False)


def _grads(model, sums, weights):
    model.zero_grad(set_to_none=True)
    (sums * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_model(folder, lengths):
    model = _model(folder)
    pairs = triples(model.config.vocab_size, lengths)
    base = padded(pairs)
    want, n = ResponseLogProbs(model)(**base.as_kwargs())
    w = torch.linspace(-1, 1, len(want))  # a loss that weighs every sequence differently
    g_want = _grads(model, want, w)
    for padding_free, share_prompt in MODES:
        b = packing.pack_pairs(pairs, pad_id=0, padding_free=padding_free, share_prompt=share_prompt)
        got, counts = ResponseLogProbs(model)(**b.as_kwargs())
        assert counts.tolist() == n.tolist()
        assert_same(got.detach(), want.detach(), n)
        g = _grads(model, got, w)
        assert g.keys() == g_want.keys()
        for name in g:
            scale = g_want[name].abs().max().clamp(min=1e-12)
            assert float((g[name] - g_want[name]).abs().max() / scale) < 1e-5, (padding_free, share_prompt, name)


def test_tiny_model_logps_and_gradients_equal_the_padded_batch(tiny_model_dir):
    _check_model(tiny_model_dir, LENGTHS)


def test_smollm2_logps_and_gradients_equal_the_padded_batch(smollm2_dir):
    _check_model(smollm2_dir, [(12, 20, 9), (7, 6, 15)])


def _dense(model, b, mask):
    """Log-prob sums of a packed batch through the model's own SDPA attention, given a 4-D boolean mask."""
    with torch.no_grad():
        hidden = model.model(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=mask)[0]
        lp = torch.log_softmax(model.lm_head(hidden[b.pred_rows, b.pred_cols]), -1)
        lp = lp.gather(-1, b.targets[:, None]).squeeze(-1)
    return torch.zeros(b.n_slots).index_add(0, b.slots, lp)


def test_the_equality_check_catches_a_mask_that_lets_sequences_see_each_other(tiny_model_dir):
    """The dense form of the blocks passes; a plain causal mask over the packed row, a single flipped entry (the
    first rejected token seeing the last chosen one), and a block attention whose prefix reaches into chosen all
    fail the same check."""
    model = _model(tiny_model_dir)
    pairs = triples(model.config.vocab_size, LENGTHS)
    want, n = ResponseLogProbs(model)(**padded(pairs).as_kwargs())
    want = want.detach()
    b = packing.pack_pairs(pairs, pad_id=0, padding_free=True, share_prompt=True)
    good = packing.dense_mask(b)
    assert_same(_dense(model, b, good), want, n)

    width = b.input_ids.shape[1]
    causal = torch.ones(1, 1, width, width, dtype=torch.bool).tril()
    flipped = good.clone()
    p, c, _ = pairs[0]
    flipped[0, 0, len(p) + len(c), len(p) + len(c) - 1] = True  # rejected[0] sees chosen[-1]
    for bad in (causal, flipped):
        with pytest.raises(AssertionError):
            assert_same(_dense(model, b, bad), want, n)

    leaky = list(b.blocks)
    leaky[1] = replace(leaky[1], prefix_len=len(p) + len(c) - 1)  # pair 0's rejected block: prompt + most of chosen
    with pytest.raises(AssertionError):
        assert_same(ResponseLogProbs(model, check=False)(packed=replace(b, blocks=tuple(leaky)))[0].detach(), want,
                    n)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def _cfg(model, tmp_path, **kw):
    base = dict(model=model, loss="dpo", beta=0.1, lr=1e-3, batch_size=4, micro_batch_size=2, max_len=128,
                epochs=1, warmup_ratio=0.0, shuffle=False, ref_cache_dir=str(tmp_path / "refcache"), precision="fp32")
    return TrainConfig(**{**base, **kw})


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("padding_free, share_prompt", MODES, ids=IDS)
def test_training_with_a_lever_matches_the_padded_run(tiny_model_dir, toy_pairs, tmp_path, padding_free,
                                                      share_prompt):
    base = train(_cfg(tiny_model_dir, tmp_path, epochs=2), toy_pairs, tmp_path / "padded", progress=False)
    s = train(_cfg(tiny_model_dir, tmp_path, epochs=2, padding_free=padding_free, share_prompt=share_prompt),
              toy_pairs, tmp_path / "packed", progress=False)
    assert s["ref_cache"] != base["ref_cache"]  # the reference was scored packed too, into its own cache entry
    want, got = _metrics(tmp_path / "padded"), _metrics(tmp_path / "packed")
    assert got[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["tokens"] == a["tokens"]  # real tokens, prompt counted per sequence: no credit for skipped work
    wa = load_file(str(tmp_path / "padded" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "packed" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_live_reference_is_packed_too(tiny_model_dir, toy_pairs, tmp_path):
    kw = dict(max_steps=2, padding_free=True, share_prompt=True)
    train(_cfg(tiny_model_dir, tmp_path, **kw), toy_pairs, tmp_path / "cached", progress=False)
    train(_cfg(tiny_model_dir, tmp_path, ref_cache=False, **kw), toy_pairs, tmp_path / "live", progress=False)
    for a, b in zip(_metrics(tmp_path / "cached"), _metrics(tmp_path / "live")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)


def test_bf16_packed_run_starts_at_ln2_and_resumes_exactly(tiny_model_dir, toy_pairs, tmp_path):
    """bf16 rounds differently in a packed row than in a padded batch: the reference is scored in the same packed
    micro-batches, so step 1 is still ln 2 exactly, and a resumed run replays the same shapes bit for bit."""
    c = _cfg(tiny_model_dir, tmp_path, precision="bf16", compile=False, save_every=1, keep_checkpoints=0, epochs=2,
             padding_free=True, share_prompt=True)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(c, toy_pairs, full, progress=False)
    want = _metrics(full)
    assert want[0]["loss"] == pytest.approx(math.log(2), abs=1e-7) and want[0]["rewards/margin"] == 0.0
    train(c, toy_pairs, cut, progress=False)
    shutil.rmtree(cut / "model")
    (cut / "COMPLETED").unlink()
    for later in ("step-2", "step-3"):
        shutil.rmtree(cut / "checkpoints" / later)
    s = train(c, toy_pairs, cut, progress=False)
    assert s["resumed_from"] == 1
    assert [r["loss"] for r in _metrics(cut)] == [r["loss"] for r in want]
    wa, wb = load_file(str(cut / "model" / "model.safetensors")), load_file(str(full / "model" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reference_cache_key_names_the_packing():
    from deltalearn.tokenize import EncodedPair

    enc = [EncodedPair([1, 2], [3], [4])]
    keys = {refcache.cache_key(enc, model_fingerprint="m", precision="fp32", packing=packing.mode(pf, sp))
            for pf in (False, True) for sp in (False, True)}
    assert len(keys) == 4
    assert packing.mode(False, False) is None  # the padded layout keeps the keys of earlier caches


def test_dry_run_counts_the_flops_of_the_layout_it_will_run():
    """A shared prompt runs the prompt once per pair: the plan's tokens drop by exactly that, and it says so."""
    from deltalearn.plan import DEFAULT_PROMPT_TOKENS, format_plan, plan
    from deltalearn.recipe import load_recipe

    path = Path(__file__).resolve().parent.parent / "recipes" / "tulu3-8b-qwen2.5-3b-over-1.5b.yaml"
    runs = {(pf, sp): plan(load_recipe(path, [f"train.padding_free={str(pf).lower()}",
                                              f"train.share_prompt={str(sp).lower()}"]))
            for pf in (False, True) for sp in (False, True)}
    padded = runs[(False, False)]["arms"][0]
    shared = runs[(True, True)]["arms"][0]
    assert runs[(True, False)]["arms"][0]["tokens"] == padded["tokens"]  # padding is not in the plan's count
    assert padded["tokens"] - shared["tokens"] == padded["steps"] * padded["batch_size"] * DEFAULT_PROMPT_TOKENS
    assert shared["total_flops"] < padded["total_flops"]
    assert "(padding-free, shared prompt)" in format_plan(runs[(True, True)])
    assert "(padded)" in format_plan(runs[(False, False)])


@pytest.mark.slow
def test_compiled_layers_with_both_levers_match_the_padded_run(tiny_model_dir, toy_pairs, tmp_path):
    """Compiled decoder layers call the block attention between their graphs (it is a Python loop over blocks)."""
    train(_cfg(tiny_model_dir, tmp_path), toy_pairs, tmp_path / "padded", progress=False)
    s = train(_cfg(tiny_model_dir, tmp_path, compile=True, padding_free=True, share_prompt=True), toy_pairs,
              tmp_path / "compiled", progress=False)
    assert s["compiled"]
    for a, b in zip(_metrics(tmp_path / "padded"), _metrics(tmp_path / "compiled")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_two_processes_with_both_levers_match_one_padded(tiny_model_dir, toy_pairs, tmp_path):
    """Under data parallel (2 CPU processes, gloo) the packed batch goes through DDP's forward as a keyword."""
    import os
    import subprocess
    import sys

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    common = ["--pairs", str(pairs), "--model", tiny_model_dir, "--no-progress", "--loss", "dpo",
              "--set", "train.lr=0.001", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=2",
              "--set", "train.max_len=128", "--set", f"train.ref_cache_dir={tmp_path / 'refcache'}",
              "--set", "train.precision=fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "deltalearn.cli", "train", "--out", str(tmp_path / "one"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537",
                          "-m", "deltalearn.cli", "train", "--out", str(tmp_path / "two"), *common,
                          "--set", "train.padding_free=true", "--set", "train.share_prompt=true"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_flash_varlen_is_chosen_only_where_it_can_run():
    """flash-attention kernels take bf16 on CUDA and express one causal block per sequence: never on CPU, fp32, or
    with a shared prompt (whose rejected block attends to a prefix it is not contiguous with)."""
    assert packing.varlen_attention("cpu", "bf16", True, False) is None
    assert packing.varlen_attention("cuda", "fp32", True, False) is None
    assert packing.varlen_attention("cuda", "bf16", True, True) is None
    assert packing.varlen_attention("cuda", "bf16", False, False) is None
