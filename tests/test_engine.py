"""Engine defects found by reading the loop against accelerate and TRL, each pinned by a test on a real tiny model:
the gradient-sync flag per micro-batch (DeepSpeed steps on it), logit transforms the lean head must honour,
dropout in the policy, bf16 only where it is native, the live reference's trust_remote_code, and label smoothing
where a loss has no smoothed form."""

import json
import math
from pathlib import Path

import pytest
import torch

from deltalearn.logps import ResponseLogProbs, collate, full_logits_reference
from deltalearn.recipe import ConfigError, TrainConfig
from deltalearn.train import train

from conftest import build_tiny_llama


def cfg(model, tmp_path, **kw):
    base = dict(model=model, loss="dpo_norm", lr=1e-3, batch_size=4, micro_batch_size=2, max_len=128, epochs=1,
                precision="fp32", ref_cache_dir=str(tmp_path / "refcache"))
    base.update(kw)
    return TrainConfig(**base)


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_gradients_sync_only_on_the_last_micro_batch_of_a_step(tiny_model_dir, toy_pairs, tmp_path):
    """accelerate hands `sync_gradients` to DeepSpeed on every backward, and DeepSpeed takes an optimizer step
    whenever it is True: it must be False on all but the last micro-batch of each optimizer step."""
    from accelerate import Accelerator

    class Recording(Accelerator):
        seen: list

        def backward(self, loss, **kw):
            self.seen.append(self.sync_gradients)
            return super().backward(loss, **kw)

    acc = Recording(cpu=True)
    acc.seen = []
    train(cfg(tiny_model_dir, tmp_path, micro_batch_size=1, max_steps=2), toy_pairs, tmp_path / "run",
          progress=False, accelerator=acc)
    assert acc.seen == [False, False, False, True] * 2


def tiny_granite(scaling: float, init: float = 0.02):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    c = GraniteConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, logits_scaling=scaling,
                      initializer_range=init)
    return GraniteForCausalLM(c).eval()


def granite_batch():
    g = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(0, 97, (5,), generator=g).tolist(), torch.randint(0, 97, (n,), generator=g).tolist())
            for n in (7, 4)]
    return collate(seqs, pad_id=0)


def test_lean_head_honours_granite_logits_scaling():
    model, batch = tiny_granite(8.0), granite_batch()
    with torch.no_grad():
        lean, _ = ResponseLogProbs(model)(batch.input_ids, batch.attention_mask, batch.loss_mask)
        full = full_logits_reference(model, batch)
    assert torch.allclose(lean, full, atol=1e-4), (lean, full)


def _lean_after_check(model, batch) -> bool:
    import warnings

    scorer = ResponseLogProbs(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer(batch.input_ids, batch.attention_mask, batch.loss_mask)
    return scorer.lean


def test_an_unlisted_logit_transform_is_caught_by_the_first_batch_check(monkeypatch):
    """A new architecture whose config field is not in the list: the one-row check against the model's own
    logits falls back to the full path instead of training on wrong log-probs."""
    import deltalearn.logps as logps

    monkeypatch.setattr(logps, "logit_transforms", lambda config: {})
    model, batch = tiny_granite(8.0), granite_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # checked in fp32 even under autocast
        assert not _lean_after_check(model, batch)
    scorer = ResponseLogProbs(model)
    assert scorer.lean
    with torch.no_grad(), pytest.warns(UserWarning, match="lean LM head disagrees"):
        lean, _ = scorer(batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert not scorer.lean
    assert torch.allclose(lean, full_logits_reference(model, batch), atol=1e-4)


def test_policy_dropout_is_off_so_step_one_is_log_two(smollm2_dir, toy_pairs, tmp_path):
    """The cached reference is scored in eval mode; a policy with attention dropout would start away from it."""
    from transformers import AutoConfig

    model_dir = build_tiny_llama(tmp_path / "dropout-llama", smollm2_dir)
    c = AutoConfig.from_pretrained(model_dir)
    c.attention_dropout = 0.5
    c.save_pretrained(model_dir)
    train(cfg(model_dir, tmp_path, max_steps=1), toy_pairs, tmp_path / "run", progress=False)
    first = metrics(tmp_path / "run")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-6)


def test_cuda_bf16_means_native_not_emulated(monkeypatch):
    """No GPU here, so the CUDA probes are stood in for by a T4's answers: bf16 only through emulation."""
    from deltalearn.precision import use_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert use_bf16("auto", "cuda:0") is False
    assert use_bf16("bf16", "cuda:0") is True


def test_checkpoint_rng_holds_the_gpu_generator_too(monkeypatch, tmp_path):
    """Resume restores every generator a step draws from: the CPU one (run for real here) and, on a GPU, the
    device's own (LoRA dropout draws from it; no GPU here, so its two calls are stood in for)."""
    from safetensors.torch import load_file, save_file

    from deltalearn.train import restore_rng, rng_tensors

    torch.manual_seed(5)
    save_file(rng_tensors("cpu"), str(tmp_path / "rng.safetensors"))
    want = torch.rand(4)
    torch.rand(9)
    restore_rng(load_file(str(tmp_path / "rng.safetensors")), "cpu")
    assert torch.equal(torch.rand(4), want)
    assert set(load_file(str(tmp_path / "rng.safetensors"))) == {"torch_rng"}

    gpu_state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    save_file(rng_tensors("cuda:1"), str(tmp_path / "rng1.safetensors"))
    restore_rng(load_file(str(tmp_path / "rng1.safetensors")), "cuda:1")
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == "cuda:1"


def test_live_reference_honours_trust_remote_code(smollm2_dir, toy_pairs, tmp_path):
    """A model whose code ships in its folder (auto_map): the live reference must load it like the policy does."""
    model_dir = Path(build_tiny_llama(tmp_path / "custom-llama", smollm2_dir))
    (model_dir / "custom_llama.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n\n"
        "class CustomLlama(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    c = json.loads((model_dir / "config.json").read_text())
    c.update(model_type="custom-llama", architectures=["CustomLlama"],
             auto_map={"AutoConfig": "custom_llama.CustomConfig", "AutoModelForCausalLM": "custom_llama.CustomLlama"})
    (model_dir / "config.json").write_text(json.dumps(c))
    train(cfg(str(model_dir), tmp_path, max_steps=1, ref_cache=False, trust_remote_code=True), toy_pairs,
          tmp_path / "run", progress=False)
    assert metrics(tmp_path / "run")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("loss", ["ipo", "sft"])
def test_label_smoothing_without_a_smoothed_form_is_refused(tiny_model_dir, toy_pairs, tmp_path, loss):
    with pytest.raises(ConfigError, match=f"label_smoothing=0.1 has no meaning for loss={loss}"):
        train(cfg(tiny_model_dir, tmp_path, loss=loss, label_smoothing=0.1), toy_pairs, tmp_path / "run",
              progress=False)


def test_a_gpu_launch_config_on_a_machine_without_gpus_fails_before_loading(monkeypatch, tmp_path):
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` exports, on this GPU-less machine: a
    clear error before any model is read (the model name here does not even exist)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for k, v in {"ACCELERATE_USE_CPU": "False", "ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="FSDP accelerate config asks for 8 GPU processes .* no GPU"):
        train(TrainConfig(model=str(tmp_path / "no-such-model")), [{"prompt": "a", "chosen": "b", "rejected": "c"}],
              tmp_path / "run", progress=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # a DeepSpeed config made CPU: accelerate would ignore it
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed accelerate config needs GPUs"):
        train(TrainConfig(model=str(tmp_path / "no-such-model")), [{"prompt": "a", "chosen": "b", "rejected": "c"}],
              tmp_path / "run", progress=False)
