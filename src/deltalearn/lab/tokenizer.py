"""The lab's tokenizer: one token per character of the task, plus `Answer:`, as an ordinary HF fast tokenizer.

It is a `tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast` and saved with `save_pretrained`, so
`AutoTokenizer` loads it like any hub tokenizer. Its chat template makes the lab models ordinary chat models for the
rest of deltalearn: a prompt renders as `<bos>6+9+5+1+6=` and the assistant turn appends the solution and `<eos>`,
which is prefix-stable, so `tokenize.prompt_ids` / `response_ids` work unchanged.
"""

from __future__ import annotations

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
SYMBOLS = [str(d) for d in range(10)] + ["+", "=", ",", "Answer:"]
VOCAB = SPECIALS + SYMBOLS

# System messages are ignored (the task has none); only one user turn and its answer are rendered.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every match is its own word: 'Answer:' as one token, anything else one character (unknown ones -> <unk>).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"Answer:|\S"), behavior="isolated")
    core.decoder = decoders.Fuse()  # join tokens without spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok
