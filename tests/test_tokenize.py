"""The prompt/response boundary, checked in token space on real chat templates."""

import copy

import pytest
from transformers import AutoTokenizer

from deltalearn.io import DataError
from deltalearn.tokenize import encode_pair, encode_pairs, prompt_ids, response_ids

# Tulu 3's chat template (the paper's student, Tulu-3-8B-SFT), reproduced here as a second real template style:
# role tags on their own lines and EOS written by the template after the assistant turn.
TULU_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tulu_tok(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.chat_template = TULU_TEMPLATE
    return tok


def _pieces(tok, ids):
    return [tok.decode([i]) for i in ids]


def test_smollm2_template_boundary(smol_tok):
    enc = encode_pair(smol_tok, "What is 2+2?", "It is **4**.", "Five.", max_len=200)
    prompt_text = smol_tok.decode(enc.prompt)
    assert prompt_text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text.count("<|im_start|>") == 3  # system (default), user, assistant header: nothing doubled
    assert _pieces(smol_tok, enc.chosen) == ["It", " is", " **", "4", "**.", "<|im_end|>"]  # EOS trained, no "\n"
    assert _pieces(smol_tok, enc.rejected) == ["F", "ive", ".", "<|im_end|>"] or \
        smol_tok.decode(enc.rejected) == "Five.<|im_end|>"
    assert enc.chosen[-1] == smol_tok.eos_token_id


def test_tulu_template_boundary(tulu_tok):
    p = prompt_ids(tulu_tok, [{"role": "user", "content": "Hi there"}])
    assert tulu_tok.decode(p) == "<|user|>\nHi there\n<|assistant|>\n"
    r = response_ids(tulu_tok, [{"role": "user", "content": "Hi there"}], "Hello!")
    assert tulu_tok.decode(r) == "Hello!" + tulu_tok.eos_token
    assert r.count(tulu_tok.eos_token_id) == 1


def test_explicit_and_implicit_prompts_match(smol_tok):
    a = encode_pair(smol_tok, "Name a color.", "Blue.", "Car.", max_len=100)
    b = encode_pair(smol_tok, [{"role": "user", "content": "Name a color."}],
                    [{"role": "assistant", "content": "Blue."}], [{"role": "assistant", "content": "Car."}], max_len=100)
    assert a == b


def test_template_that_is_not_prefix_stable_is_an_error(smol_tok):
    tok = copy.deepcopy(smol_tok)
    # the generation prompt writes "<|assistant|>\n" but a finished turn writes "<|assistant|> " -> not a prefix
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '\n' }}"
                         "{% else %}{{ '<|assistant|> ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    with pytest.raises(DataError, match="not prefix-stable"):
        encode_pair(tok, "Hi", "Hello", "Go away", max_len=100)


def test_doubled_bos_is_an_error(smol_tok):
    tok = copy.deepcopy(smol_tok)
    tok.chat_template = "{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="doubled BOS"):
        prompt_ids(tok, "Hi")


def test_truncation_is_symmetric_and_counted(smol_tok):
    p = prompt_ids(smol_tok, "Tell me a story.")
    long, short = "word " * 200, "Short answer."
    enc = encode_pair(smol_tok, "Tell me a story.", long, short, max_len=len(p) + 10)
    assert len(enc.prompt) + len(enc.chosen) == len(p) + 10 and enc.chosen_truncated
    assert not enc.rejected_truncated
    rows = [{"prompt": "Tell me a story.", "chosen": long, "rejected": short},
            {"prompt": "x " * 500, "chosen": "a", "rejected": "b"}]
    pairs, kept, stats = encode_pairs(smol_tok, rows, max_len=len(p) + 10)
    assert kept == [0] and stats.dropped_prompt_too_long == 1 and stats.truncated_pairs == 1


def test_bad_rows_name_row_and_field(smol_tok):
    with pytest.raises(DataError, match=r"pairs.jsonl, row 2, field 'rejected': missing field"):
        encode_pairs(smol_tok, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
                     max_len=100, source="pairs.jsonl")
    with pytest.raises(DataError, match="row 1, field 'chosen'"):
        encode_pairs(smol_tok, [{"prompt": "a", "chosen": 3, "rejected": "c"}], max_len=100, source="p")


def test_a_cut_off_response_trains_no_eos(smol_tok, tulu_tok):
    """A response kept with --keep-truncated stopped at max_new_tokens, not by choice: training EOS after it would
    teach the model to stop mid-sentence (issue 17 item 5). The pair row's *_truncated flags say which side."""
    from deltalearn.pairs import make_pairs
    from deltalearn.recipe import PairConfig

    gens = {m: [{"id": "p", "prompt": "List three colors.", "response": text, "model": m, "truncated": cut}]
            for m, text, cut in (("a", "Red, green, and blue.", False), ("b", "Red, green, and", True))}
    (pair,), _ = make_pairs(gens, PairConfig(rule="columns", chosen="a", rejected="b", drop_truncated=False))
    assert (pair["chosen_truncated"], pair["rejected_truncated"]) == (False, True)
    (rev,), _ = make_pairs(gens, PairConfig(rule="columns", chosen="a", rejected="b", drop_truncated=False,
                                            control="reverse"))
    assert (rev["chosen_truncated"], rev["rejected_truncated"]) == (True, False)  # the flag follows its text
    for tok in (smol_tok, tulu_tok):
        (enc,), _, _ = encode_pairs(tok, [pair], max_len=256)
        assert enc.chosen[-1] == tok.eos_token_id  # a finished answer ends with a trained EOS
        assert tok.eos_token_id not in enc.rejected and enc.rejected_truncated
        assert tok.decode(enc.rejected).strip().endswith("and")
        (r_enc,), _, _ = encode_pairs(tok, [rev], max_len=256)
        assert tok.eos_token_id not in r_enc.chosen and r_enc.rejected[-1] == tok.eos_token_id
