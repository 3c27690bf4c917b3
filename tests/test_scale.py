"""Single-process checks of what the multi-process path relies on (tests/test_multiprocess.py launches the rest):
checkpoint rotation and hashing of subfolders, the live reference wrapped once, use_cache restored after gradient
checkpointing, keep_freed_memory off on GPUs, the hub revision in the reference-cache key, and ZeRO-3's global
config kept away from the models deltalearn loads whole."""

import json
import math
from pathlib import Path

import pytest
import torch

from deltalearn import distributed, models, speedups
from deltalearn.logps import ResponseLogProbs
from deltalearn.recipe import TrainConfig
from deltalearn.train import (CorruptCheckpoint, checkpoints, deepspeed_settings, train, verify_checkpoint,
                              write_hashes)


def cfg(model, tmp_path, **kw):
    base = dict(model=model, loss="dpo", lr=1e-3, batch_size=4, micro_batch_size=1, max_len=64, max_steps=2,
                ref_cache_dir=str(tmp_path / "refcache"), precision="fp32")
    return TrainConfig(**{**base, **kw})


def test_only_the_newest_checkpoints_are_kept(tiny_model_dir, toy_pairs, tmp_path):
    train(cfg(tiny_model_dir, tmp_path, max_steps=5, save_every=1, keep_checkpoints=2), toy_pairs, tmp_path / "a",
          progress=False)
    assert [p.name for p in checkpoints(tmp_path / "a")] == ["step-4", "step-3"]
    train(cfg(tiny_model_dir, tmp_path, max_steps=3, save_every=1, keep_checkpoints=0), toy_pairs, tmp_path / "b",
          progress=False)
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-2", "step-1"]
    assert TrainConfig.__dataclass_fields__["keep_checkpoints"].default == 2


def test_checkpoint_hashes_cover_subfolders(tmp_path):
    """DeepSpeed writes its shards into pytorch_model/: those files are hashed and verified too."""
    ckpt = tmp_path / "step-1"
    (ckpt / "pytorch_model").mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    shard = ckpt / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(b"\x00" * 4096)
    write_hashes(ckpt, None)
    assert set(json.loads((ckpt / "hashes.json").read_text())) == {
        "state.json", "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    verify_checkpoint(ckpt)
    shard.write_bytes(b"\x00" * 2048)
    with pytest.raises(CorruptCheckpoint, match="zero_pp_rank_0"):
        verify_checkpoint(ckpt)


def test_live_reference_checks_its_lean_head_once(tiny_model_dir, toy_pairs, tmp_path, monkeypatch):
    """ref_cache: false scores the reference live; its wrapper is built once, so the lean-head check (a full-vocabulary
    fp32 forward) runs once for the policy and once for the reference, not once per micro-batch (8 here, before)."""
    calls = []
    real = ResponseLogProbs._check_lean

    def counting(self, *a, **kw):
        calls.append(id(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(ResponseLogProbs, "_check_lean", counting)
    other = tmp_path / "reference"  # a separate reference model, so the live reference is its own module
    import shutil

    shutil.copytree(tiny_model_dir, other)
    s = train(cfg(tiny_model_dir, tmp_path, ref_cache=False, reference=str(other)), toy_pairs, tmp_path / "run",
              progress=False)
    assert s["steps"] == 2
    assert len(calls) == 2, calls  # 2 steps x 4 micro-batches = 8 reference forwards


def test_gradient_checkpointing_does_not_leave_use_cache_off(tiny_model_dir, toy_pairs, tmp_path):
    train(cfg(tiny_model_dir, tmp_path, max_steps=1, gradient_checkpointing=True), toy_pairs, tmp_path / "run",
          progress=False)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved.get("use_cache", True) is True


def test_keep_freed_memory_is_off_when_the_model_is_on_a_gpu():
    assert speedups.keep_freed_memory(torch.device("cuda", 0)) is False
    assert speedups.keep_freed_memory("cuda:1") is False


def test_hub_revision_is_part_of_the_model_fingerprint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--some-org--some-model"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    first = models.resolve("some-org/some-model").fingerprint
    (repo / "refs" / "main").write_text("b" * 40)
    second = models.resolve("some-org/some-model").fingerprint
    assert first != second and first.endswith("a" * 40)


class ZeroThreeConfig:
    """Stands in for accelerate's HfDeepSpeedConfig, which cannot be built without deepspeed installed: transformers
    decides on zero.Init through exactly this interface (a global weak reference to an object with is_zero3())."""

    config = {"zero_optimization": {"stage": 3}}

    def is_zero3(self):
        return True


def test_models_loaded_whole_under_a_live_zero3_config(tiny_model_dir):
    """accelerate keeps a ZeRO-3 HfDeepSpeedConfig alive under DeepSpeed; transformers then builds every
    from_pretrained model inside deepspeed.zero.Init (placeholder parameters; a collective). The reference, the
    parameter count and the LoRA merge's plain copy are loaded outside it, with full parameters, and the global
    config is restored after, so the policy's own load still partitions."""
    from transformers.integrations.deepspeed import (is_deepspeed_zero3_enabled, set_hf_deepspeed_config,
                                                     unset_hf_deepspeed_config)

    live = ZeroThreeConfig()
    set_hf_deepspeed_config(live)
    try:
        assert is_deepspeed_zero3_enabled()
        with distributed.outside_zero3():
            assert not is_deepspeed_zero3_enabled()
            m, _ = models.load_model(tiny_model_dir, with_tokenizer=False)
            n = models.parameter_count(tiny_model_dir)
        assert is_deepspeed_zero3_enabled()  # restored: the policy's own load still partitions
        assert m.get_output_embeddings().weight.dim() == 2
        assert n == sum(p.numel() for p in m.parameters()) > 0
    finally:
        unset_hf_deepspeed_config()


def test_deepspeed_clips_at_the_recipes_grad_clip():
    """The shipped DeepSpeed configs fix gradient_clipping: 1.0, which the engine applies: the recipe's value wins."""
    import yaml

    root = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
    for name in ("deepspeed_zero1.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"):
        shipped = dict(yaml.safe_load((root / name).read_text())["deepspeed_config"])
        for clip in (0.0, 0.5):
            got = deepspeed_settings(shipped, TrainConfig(model="m", grad_clip=clip, batch_size=8,
                                                          micro_batch_size=2), n_micro=4)
            assert got["gradient_clipping"] == clip and got["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.slow
def test_gpu_check_dry_run_prints_its_table(tmp_path):
    """benchmarks/gpu_check.py on CPU with the tiny config: the three rows run and step 1 is ln 2 in each."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| check | step-1 loss |" in r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row.get("ref_cache_hit") for row in rows[:2]] == [False, True]
    assert all(row["step1"] == pytest.approx(math.log(2), abs=1e-6) for row in rows), rows


def test_paper_scale_plans_state_checkpoint_disk_and_host_ram():
    from deltalearn.plan import dry_run

    root = Path(__file__).resolve().parent.parent
    text = dry_run(str(root / "recipes" / "tulu3-8b-llama3.2-3b-over-1b.yaml"))
    line = next(x for x in text.splitlines() if "disk:" in x)
    # 8B: 12 B per parameter (fp32 weights + Adam's two moments) per checkpoint, 2 kept; 4 B/param per rank
    assert "2 checkpoint(s) kept x 96" in line and "host RAM per rank ~32" in line, line
