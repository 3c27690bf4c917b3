"""`train.truncation`: today's rule (`cut`: no EOS after a cut) beside the authors' reference (`eos_at_cut`:
OpenRLHF's reward_dataset.py / sft_dataset.py force the last token of an over-long sequence to EOS and end every
response, a generation-cut one included, with EOS). Exact token layouts on SmolLM2's real template."""

import pytest
from transformers import AutoTokenizer

from deltalearn.tokenize import encode_pair, encode_pairs, prompt_ids, response_ids

PROMPT = "Tell me a story."
LONG = "Once upon a time there was a tiny robot who loved to count the stars every night. " * 6


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_over_long_sequence_cut_at_max_len_with_eos_last(tok):
    p = prompt_ids(tok, PROMPT)
    full = response_ids(tok, PROMPT, LONG)  # the whole response as trained, ending with EOS
    eos = tok.eos_token_id
    assert full[-1] == eos
    room = 20
    max_len = len(p) + room
    ref = encode_pair(tok, PROMPT, LONG, "Short.", max_len=max_len, eos_at_cut=True)
    assert ref.prompt == p
    assert ref.chosen == full[:room - 1] + [eos]  # cut at max_len, the last token made EOS
    assert len(ref.prompt) + len(ref.chosen) == max_len and ref.chosen_truncated
    ours = encode_pair(tok, PROMPT, LONG, "Short.", max_len=max_len)
    assert ours.chosen == full[:room] and ours.chosen[-1] != eos  # today's rule: the start, no EOS
    # a response that fits is the same under both rules
    assert ref.rejected == ours.rejected == response_ids(tok, PROMPT, "Short.")


def test_generation_cut_response_gets_eos_only_under_the_reference_rule(tok):
    eos = tok.eos_token_id
    cut_text = "Red, green, and"
    ended = response_ids(tok, PROMPT, cut_text)
    rows = [{"prompt": PROMPT, "chosen": "Red, green, and blue.", "rejected": cut_text, "rejected_truncated": True}]
    (ours,), _, _ = encode_pairs(tok, rows, max_len=256)
    (ref,), _, _ = encode_pairs(tok, rows, max_len=256, eos_at_cut=True)
    assert ours.rejected == ended[:-1] and eos not in ours.rejected
    assert ref.rejected == ended and ref.rejected[-1] == eos  # OpenRLHF appends EOS to every response
    assert ref.rejected_truncated  # still counted as truncated


def test_reference_rule_drops_prompts_that_leave_fewer_than_3_tokens(tok):
    p = prompt_ids(tok, PROMPT)
    rows = [{"prompt": PROMPT, "chosen": LONG, "rejected": "No."}]
    for room, kept_ours, kept_ref in ((1, 1, 0), (2, 1, 0), (3, 1, 1)):
        ours, _, _ = encode_pairs(tok, rows, max_len=len(p) + room)
        ref, _, stats = encode_pairs(tok, rows, max_len=len(p) + room, eos_at_cut=True)
        assert (len(ours), len(ref)) == (kept_ours, kept_ref), room
        if ref:
            assert ref[0].chosen[-1] == tok.eos_token_id and len(ref[0].chosen) == room
        else:
            assert stats.dropped_prompt_too_long == 1
