"""Sequence log-probs: the lean path equals the full-logits path, and results do not depend on batch-mates."""

import torch
from transformers import AutoModelForCausalLM

from deltalearn.logps import ResponseLogProbs, collate, sequence_logps


def test_collate_picture():
    b = collate([([5, 6], [7, 8, 9]), ([5], [7])], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9],   # prompt + response
                                    [5, 7, 0, 0, 0]]   # prompt + response, right-padded
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[False, False, True, True, True], [False, True, False, False, False]]


def test_sequence_logps_by_hand():
    # vocab 3, one sequence [0, 1, 2] with tokens 1 and 2 trained; uniform logits -> each token log(1/3)
    logits = torch.zeros(1, 3, 3)
    ids = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[False, True, True]])
    s = sequence_logps(logits, ids, mask, "sum")
    m = sequence_logps(logits, ids, mask, "mean")
    assert torch.allclose(s, torch.tensor([2 * torch.log(torch.tensor(1 / 3))]))
    assert torch.allclose(m, torch.tensor([torch.log(torch.tensor(1 / 3))]))


def _seqs():
    return [([1, 9690, 198, 2683], [359, 253, 5356, 2]), ([1, 4093, 198], [1780, 314, 216, 34, 27, 34, 47, 2]),
            ([1, 520], [9531, 2])]


def test_lean_equals_full_logits_values_and_grads(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    b = collate(_seqs(), pad_id=2)
    full = sequence_logps(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.input_ids,
                          b.loss_mask, "sum")
    full.sum().backward()
    g_full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lean = ResponseLogProbs(model, chunk=3)  # a small chunk exercises the chunk loop
    assert lean.lean
    sums, counts = lean(b.input_ids, b.attention_mask, b.loss_mask)
    sums.sum().backward()
    assert torch.allclose(sums, full, atol=1e-5)
    assert counts.tolist() == [4, 8, 2]
    for n, p in model.named_parameters():
        # equal up to fp32 summation order: relative to the largest gradient entry
        scale = g_full[n].abs().max().item()
        assert (p.grad - g_full[n]).abs().max().item() <= 1e-5 * max(scale, 1e-3), n


def test_batch_mate_and_padding_invariance(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    scorer = ResponseLogProbs(model)
    seqs = _seqs()
    with torch.no_grad():
        together, _ = scorer(*_tensors(collate(seqs, pad_id=2)))
        alone = [scorer(*_tensors(collate([s], pad_id=2)))[0].item() for s in seqs]
        other_pad, _ = scorer(*_tensors(collate(seqs, pad_id=0)))
    assert torch.allclose(together, torch.tensor(alone), atol=1e-5)
    assert torch.allclose(together, other_pad, atol=1e-6)


def _tensors(b):
    return b.input_ids, b.attention_mask, b.loss_mask


def test_wrapper_keeps_a_tied_lm_head_tied_through_a_move_to_meta(tiny_model_dir):
    # accelerate's FSDP2 prepare (cpu_ram_efficient_loading) does exactly this to the module it is handed: move it
    # to meta (which unties shared weights), re-tie through its tie_weights, then group the embedding and the head
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    scorer = ResponseLogProbs(model)
    assert scorer.get_output_embeddings().weight is scorer.get_input_embeddings().weight  # the tiny Llama ties
    scorer = scorer.to(torch.device("meta"))
    scorer.tie_weights()
    assert scorer.get_input_embeddings() is model.model.embed_tokens
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(list(scorer.parameters())) == len(list(AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()))
