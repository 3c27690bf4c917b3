"""The one owner of tokenization and the prompt/response boundary.

Rules (each is a silent bug elsewhere; here each is checked):
- The prompt is rendered with the chat template and the generation prompt; the full conversation without it.
  Both are tokenized with `add_special_tokens=False`, because the template already wrote any BOS: this gives
  exactly one BOS, and generation uses the very same prompt ids.
- The response is sliced in *token* space: the prompt's ids must be a prefix of the full conversation's ids,
  otherwise the row is an error (TRL only warns; open-instruct #1800 shows templates that are not prefix-stable).
- The response ends with the EOS token, which is trained; anything the template writes after it (a newline)
  is not. A response that was cut off at max_new_tokens (`chosen_truncated` / `rejected_truncated` in the pair
  row) ends without EOS: training EOS after a cut-off answer would teach the model to stop mid-sentence.
- Truncation keeps the start of each response and is applied to chosen and rejected by the same rule; a pair
  whose prompt alone leaves no room for a response is dropped and counted.
- `eos_at_cut=True` is the authors' reference rule instead (OpenRLHF's reward_dataset.py / sft_dataset.py): every
  response ends with EOS, a response cut at generation included; a sequence over max_len is cut at max_len and its
  last token replaced by EOS; a prompt must leave at least 3 tokens (OpenRLHF drops prompts of >= max_len - 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from deltalearn.io import DataError

Messages = list[dict]


def as_messages(prompt, *, system_prompt: str | None = None, where: str = "prompt") -> Messages:
    """A prompt as chat messages. Accepts a string or a list of {role, content} dicts (TRL's conversational form)."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        for i, m in enumerate(prompt):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(None, f"{where}[{i}] must have string 'role' and 'content'")
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise DataError(None, f"{where} must be a string or a non-empty list of chat messages, got {type(prompt).__name__}")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def as_response_text(response, *, where: str = "response") -> str:
    """A response as text. Accepts a string or TRL's conversational form [{'role': 'assistant', 'content': ...}]."""
    if isinstance(response, str):
        return response
    if isinstance(response, list) and len(response) >= 1 and isinstance(response[-1], dict):
        last = response[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise DataError(None, f"{where}: the last message must be from the assistant with string content")
        return last["content"]
    raise DataError(None, f"{where} must be a string or a list of chat messages, got {type(response).__name__}")


def template_hash(tokenizer) -> str:
    """Identity of the chat template + vocabulary, for caches and generation metadata."""
    h = hashlib.sha256()
    h.update((getattr(tokenizer, "chat_template", None) or "<none>").encode())
    h.update(str(len(tokenizer)).encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()[:16]


def _encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, prompt, *, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt rendered for generation (template + generation prompt), with exactly one BOS."""
    msgs = as_messages(prompt, system_prompt=system_prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = _encode_text(tokenizer, text)
    else:  # no template (plain LMs): BOS + the prompt text
        ids = _encode_text(tokenizer, "\n".join(m["content"] for m in msgs))
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        raise DataError(None, "prompt renders with a doubled BOS token; check the chat template")
    return ids


def response_ids(tokenizer, prompt, response: str, *, system_prompt: str | None = None,
                 p_ids: list[int] | None = None, ended: bool = True) -> list[int]:
    """Ids of the response as the template renders it after the prompt, ending with exactly one trained EOS;
    `ended=False` (a response cut off by max_new_tokens): no EOS, the response stops where its text stops."""
    msgs = as_messages(prompt, system_prompt=system_prompt)
    if p_ids is None:
        p_ids = prompt_ids(tokenizer, prompt, system_prompt=system_prompt)
    eos = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None):
        full_text = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}],
                                                  add_generation_prompt=False, tokenize=False)
        full = _encode_text(tokenizer, full_text)
        if full[: len(p_ids)] != p_ids:
            k = next((i for i, (a, b) in enumerate(zip(full, p_ids)) if a != b), min(len(full), len(p_ids)))
            raise DataError(None, f"the chat template is not prefix-stable: the prompt's tokens differ from the "
                            f"conversation's at token {k} ({tokenizer.decode(p_ids[k:k + 5])!r} vs "
                            f"{tokenizer.decode(full[k:k + 5])!r})")
        r = full[len(p_ids):]
        if eos is not None and eos in r:
            r = r[: len(r) - r[::-1].index(eos)]  # keep through the last EOS; drop the template's trailing text
        elif eos is not None:
            r = r + [eos]
    else:
        r = _encode_text(tokenizer, response) + ([eos] if eos is not None else [])
    if not ended and eos is not None and r and r[-1] == eos:
        r = r[:-1]
    return r


@dataclass
class EncodedPair:
    """One preference pair in token space. `chosen`/`rejected` are response ids only (prompt shared)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_truncated: bool = False
    rejected_truncated: bool = False


@dataclass
class EncodeStats:
    pairs: int = 0
    dropped_prompt_too_long: int = 0
    truncated_pairs: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "dropped_prompt_too_long": self.dropped_prompt_too_long,
                "truncated_pairs": self.truncated_pairs,
                "truncated_fraction": self.truncated_pairs / max(1, self.pairs)}


def _cut_with_eos(ids: list[int], room: int, eos: int | None) -> list[int]:
    """The reference's cut: at most `room` tokens, the last one EOS when the response was longer."""
    if len(ids) <= room or eos is None:
        return ids[:room]
    return ids[:room - 1] + [eos]


def encode_pair(tokenizer, prompt, chosen, rejected, *, max_len: int, system_prompt: str | None = None,
                min_response_tokens: int = 1, chosen_cut: bool = False, rejected_cut: bool = False,
                eos_at_cut: bool = False) -> EncodedPair | None:
    """Tokenize one pair; None when the prompt leaves fewer than `min_response_tokens` tokens for a response.
    `*_cut`: that response was cut off when generated (it hit max_new_tokens), so it gets no EOS -- unless
    `eos_at_cut` (the reference rule, see the module docstring)."""
    p = prompt_ids(tokenizer, prompt, system_prompt=system_prompt)
    room = max_len - len(p)
    if room < (max(min_response_tokens, 3) if eos_at_cut else min_response_tokens):
        return None
    c = response_ids(tokenizer, prompt, as_response_text(chosen, where="chosen"), system_prompt=system_prompt, p_ids=p,
                     ended=eos_at_cut or not chosen_cut)
    r = response_ids(tokenizer, prompt, as_response_text(rejected, where="rejected"), system_prompt=system_prompt,
                     p_ids=p, ended=eos_at_cut or not rejected_cut)
    if eos_at_cut:
        eos = tokenizer.eos_token_id
        return EncodedPair(p, _cut_with_eos(c, room, eos), _cut_with_eos(r, room, eos),
                           chosen_cut or len(c) > room, rejected_cut or len(r) > room)
    return EncodedPair(p, c[:room], r[:room], chosen_cut or len(c) > room, rejected_cut or len(r) > room)


def encode_pairs(tokenizer, rows: list[dict], *, max_len: int, system_prompt: str | None = None,
                 source: str | None = None, eos_at_cut: bool = False
                 ) -> tuple[list[EncodedPair], list[int], EncodeStats]:
    """Encode rows with prompt/chosen/rejected. Returns (pairs, kept row indices, stats). Bad rows are DataErrors
    naming the source, row and field."""
    stats = EncodeStats()
    out, kept = [], []
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(source, f"missing field (row has: {', '.join(row)})", row=i + 1, field=key)
        try:
            enc = encode_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], max_len=max_len,
                              system_prompt=system_prompt, chosen_cut=bool(row.get("chosen_truncated")),
                              rejected_cut=bool(row.get("rejected_truncated")), eos_at_cut=eos_at_cut)
        except DataError as e:
            field_ = next((k for k in ("chosen", "rejected", "prompt") if str(e).startswith(k)), "prompt")
            raise DataError(source, str(e), row=i + 1, field=field_) from None
        if enc is None:
            stats.dropped_prompt_too_long += 1
            continue
        stats.pairs += 1
        stats.truncated_pairs += int(enc.chosen_truncated or enc.rejected_truncated)
        out.append(enc)
        kept.append(i)
    return out, kept, stats


# ---------------------------------------------------------------------------------------------------------
# `deltalearn inspect-data`
# ---------------------------------------------------------------------------------------------------------


def render_roles(tokenizer, enc: EncodedPair, side: str = "chosen") -> str:
    """Prompt tokens in [brackets] (masked), trained response tokens plain, with token boundaries as '|'."""
    resp = enc.chosen if side == "chosen" else enc.rejected
    masked = "|".join(tokenizer.decode([t]) for t in enc.prompt)
    trained = "|".join(tokenizer.decode([t]) for t in resp)
    return f"[masked {len(enc.prompt)} tokens] {masked!r}\n[trained {len(resp)} tokens] {trained!r}"


def add_cli_args(p) -> None:
    p.add_argument("pairs_positional", nargs="?", metavar="PAIRS", help="the same as --pairs")
    p.add_argument("--pairs", help="pairs file or folder (prompt/chosen/rejected), as for `train --pairs`")
    p.add_argument("--model", default="smollm2-135m", help="model whose tokenizer and chat template to use")
    p.add_argument("--rows", type=int, default=2, help="how many rows to show")
    p.add_argument("--max-len", type=int, default=2048, help="max tokens of prompt + response, as train.max_len")


def run_cli(args) -> int:
    from deltalearn.io import read_table
    from deltalearn.models import load_tokenizer

    from deltalearn.recipe import ConfigError

    if bool(args.pairs) == bool(args.pairs_positional):
        raise ConfigError("give the pairs once: --pairs PAIRS (or PAIRS alone)")
    path = args.pairs or args.pairs_positional
    tok = load_tokenizer(args.model)
    rows = read_table(path)
    pairs, kept, stats = encode_pairs(tok, rows[: args.rows], max_len=args.max_len, source=path)
    for enc, i in zip(pairs, kept):
        print(f"=== row {i + 1}")
        for side in ("chosen", "rejected"):
            print(f"--- {side}{' (truncated)' if getattr(enc, side + '_truncated') else ''}")
            print(render_roles(tok, enc, side))
    print(stats.as_dict())
    return 0
