"""deltalearn's `dpo` and `dpo_norm` give the same loss as TRL's DPOTrainer `sigmoid` and `sigmoid_norm` on the same
model, reference and batch (TRL 1.16, `DPOTrainer.compute_loss`).

Policy and reference are two *different* random tiny Llamas (seeds 1 and 2) with SmolLM2's real tokenizer and chat
template, so the log-ratios are far from zero and the loss is far from log 2: a test that would pass on a wrong
reference or reduction cannot pass here.

Token boundaries. Both libraries take the prompt as the chat template renders it with the generation prompt and the
response as the rest of the templated conversation, and both find the same prompt ids. They differ at the end of
the response: SmolLM2's template writes "<|im_end|>\\n" after an assistant turn. TRL trains every token after the
prompt, so its response ends with the "\\n" after <|im_end|>; deltalearn (tokenize.response_ids) stops at the EOS
<|im_end|>, because that newline is template text the model never generates (generation stops at EOS). The test
asserts exactly this difference (TRL's response ids = deltalearn's + the single token "\\n"), and then compares
losses twice: on deltalearn's ids fed through TRL's own collator and compute_loss, and on TRL's ids fed through
deltalearn's scorer. Both must agree to float precision.
"""

from __future__ import annotations

import math

import pytest
import torch

trl = pytest.importorskip("trl")

from conftest import build_tiny_llama, toy_pair_rows  # noqa: E402

from deltalearn.logps import ResponseLogProbs, collate, reduce_logps  # noqa: E402
from deltalearn.losses import LossType, preference_loss  # noqa: E402
from deltalearn.tokenize import encode_pairs  # noqa: E402


@pytest.fixture(scope="module")
def pair_of_models(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("trl-eq")
    return (build_tiny_llama(root / "policy", smollm2_dir, seed=1),
            build_tiny_llama(root / "reference", smollm2_dir, seed=2))


def _trl_trainer(policy_dir, ref_dir, rows, loss_type, beta, out):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    # bf16=False: TRL's DPOConfig defaults to bf16=True, and accelerate then runs both models' forwards under bf16
    # autocast (a ~1e-4 relative difference in the loss here); deltalearn's comparison runs in fp32.
    args = trl.DPOConfig(output_dir=str(out), loss_type=[loss_type], beta=beta, max_length=256, use_cpu=True,
                         bf16=False, report_to="none", per_device_train_batch_size=len(rows), disable_tqdm=True)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(rows))
    return trainer, tok


def _deltalearn_loss(policy, ref, seqs_c, seqs_r, pad_id, loss, beta):
    """Mean loss over pairs from deltalearn's lean scorer and pure loss function."""
    k = len(seqs_c)
    batch = collate(seqs_c + seqs_r, pad_id)
    with torch.no_grad():
        ps, pn = ResponseLogProbs(policy)(batch.input_ids, batch.attention_mask, batch.loss_mask)
        rs, rn = ResponseLogProbs(ref)(batch.input_ids, batch.attention_mask, batch.loss_mask)
    red = LossType(loss).reduction
    p, r = reduce_logps(ps, pn.float(), red), reduce_logps(rs, rn.float(), red)
    losses, _, _ = preference_loss(loss, p[:k], p[k:], r[:k], r[k:], beta=beta)
    return losses.mean().item()


@pytest.mark.parametrize("loss,trl_loss,beta", [("dpo", "sigmoid", 0.5), ("dpo_norm", "sigmoid_norm", 5.0)])
def test_loss_equals_trl(pair_of_models, tmp_path, loss, trl_loss, beta):
    policy_dir, ref_dir = pair_of_models
    rows = toy_pair_rows()[:4]
    trainer, tok = _trl_trainer(policy_dir, ref_dir, rows, trl_loss, beta, tmp_path / "trl")
    encoded, kept, _ = encode_pairs(tok, rows, max_len=256)
    assert kept == [0, 1, 2, 3]
    trl_rows = list(trainer.train_dataset)

    # 1. the token boundary: same prompt ids; TRL's response = ours + the template's "\n" after <|im_end|>
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for e, t in zip(encoded, trl_rows):
        assert t["prompt_ids"] == e.prompt
        assert e.chosen[-1] == tok.eos_token_id and e.rejected[-1] == tok.eos_token_id
        assert t["chosen_ids"] == e.chosen + newline
        assert t["rejected_ids"] == e.rejected + newline

    model = trainer.model
    policy = trainer.accelerator.unwrap_model(model)
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    model.eval()  # no dropout either way; eval also keeps TRL's metrics under "eval"
    pad = tok.pad_token_id

    # 2. deltalearn's ids through TRL's collator and compute_loss
    ours = [{"prompt_ids": e.prompt, "chosen_ids": e.chosen, "rejected_ids": e.rejected} for e in encoded]
    with torch.no_grad():
        trl_value = trainer.compute_loss(model, trainer.data_collator(ours)).item()
    dl_value = _deltalearn_loss(policy, ref, [(e.prompt, e.chosen) for e in encoded],
                                [(e.prompt, e.rejected) for e in encoded], pad, loss, beta)
    assert abs(dl_value - math.log(2)) > 0.02, "policy and reference must differ for this test to mean anything"
    assert dl_value == pytest.approx(trl_value, rel=1e-5, abs=1e-6)

    # 3. TRL's own ids (with the trailing newline) through deltalearn's scorer
    with torch.no_grad():
        trl_own = trainer.compute_loss(model, trainer.data_collator(
            [{k: t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for t in trl_rows])).item()
    dl_on_trl_ids = _deltalearn_loss(policy, ref, [(t["prompt_ids"], t["chosen_ids"]) for t in trl_rows],
                                     [(t["prompt_ids"], t["rejected_ids"]) for t in trl_rows], pad, loss, beta)
    assert dl_on_trl_ids == pytest.approx(trl_own, rel=1e-5, abs=1e-6)
    assert trl_own != pytest.approx(trl_value, rel=1e-6)  # the extra "\n" token is scored: the numbers move
