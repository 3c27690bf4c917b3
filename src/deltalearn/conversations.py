"""The authors' released layout: one column per model whose value is a whole conversation.

scottgeng00/delta_learning_* rows look like `{"qwen-2.5-3b-instruct": [{"role": "user", ...}, {"role":
"assistant", ...}], "qwen-2.5-1.5b-instruct": [...], ...}`. OpenRLHF (reward_dataset.py) takes all messages but
the last as the prompt and the last as the response. Here that rule is one function, `split_conversation`, used
by `deltalearn pair --generations` (wide tables), `deltalearn train --chosen-key/--rejected-key`, prompt loading
and the sections experiment; a malformed conversation is an error naming the file, row and column.
"""

from __future__ import annotations

from typing import Any, Optional

from deltalearn.io import DataError


def is_conversation(value: Any) -> bool:
    """A non-empty list of {role, content} mappings (checked loosely: the first item is a mapping with a role)."""
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def split_conversation(value: Any, *, source: Optional[str], row: int, field: str) -> tuple[list[dict], str]:
    """(prompt messages, response text) of a conversation whose last message is the assistant's answer."""
    if not isinstance(value, (list, tuple)) or not value:
        kind = "an empty list" if isinstance(value, (list, tuple)) else type(value).__name__
        raise DataError(source, f"expected a conversation (a list of {{role, content}} messages), got {kind}",
                        row=row, field=field)
    msgs = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(source, f"message {i} is {type(m).__name__}, expected {{'role', 'content'}}", row=row,
                            field=field)
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else type(m[key]).__name__
                raise DataError(source, f"message {i}: '{key}' must be a string (got {got})", row=row, field=field)
        msgs.append({"role": m["role"], "content": m["content"]})
    if msgs[-1]["role"] != "assistant":
        raise DataError(source, f"the last message must be the assistant's answer, got role '{msgs[-1]['role']}'",
                        row=row, field=field)
    if len(msgs) < 2:
        raise DataError(source, "the conversation has no prompt before the assistant's answer", row=row, field=field)
    return msgs[:-1], msgs[-1]["content"]


def pair_from_columns(row: dict, chosen_key: str, rejected_key: Optional[str], *, source: Optional[str],
                      n: int) -> dict:
    """A prompt/chosen/rejected row from a released-layout row's two conversation columns (SFT: rejected_key None).
    Both conversations must share their prompt: a pair of answers to different prompts is no preference."""
    for key in (chosen_key, rejected_key):
        if key is not None and key not in row:
            from deltalearn.prompts import missing_column_error

            raise missing_column_error(source, key, list(row), row=n)
    prompt, chosen = split_conversation(row[chosen_key], source=source, row=n, field=chosen_key)
    out = {**{k: v for k, v in row.items() if k not in (chosen_key, rejected_key)}, "prompt": prompt,
           "chosen": chosen}
    if rejected_key is not None:
        r_prompt, rejected = split_conversation(row[rejected_key], source=source, row=n, field=rejected_key)
        if r_prompt != prompt:
            raise DataError(source, f"the prompt of '{rejected_key}' differs from the prompt of '{chosen_key}'",
                            row=n, field=rejected_key)
        out["rejected"] = rejected
    return out


def pairs_from_columns(rows: list[dict], chosen_key: str, rejected_key: Optional[str],
                       source: Optional[str] = None) -> list[dict]:
    return [pair_from_columns(r, chosen_key, rejected_key, source=source, n=i) for i, r in enumerate(rows, start=1)]
