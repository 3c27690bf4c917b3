"""The Hugging Face Hub: `--push-to-hub REPO` for trained models and pair sets, and pair sets read from the Hub.

A push is checked before any work (Hub switched off, no token, endpoint unreachable: a ConfigError in seconds),
so an hour of training never ends in a push that could not have worked. If the upload itself fails afterwards,
the folder stays on disk and the error says how to push it later.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from deltalearn.io import DataError
from deltalearn.recipe import ConfigError

_TRUE = ("1", "true", "yes", "on")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def check_push(repo_id: str, *, timeout: float = 10.0) -> None:
    """Fail fast, before any work, when `repo_id` could not be pushed to: a malformed id, the Hub switched off
    (HF_HUB_OFFLINE), no token, or an endpoint that does not answer within `timeout` seconds."""
    what = f"--push-to-hub {repo_id}"
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"{what}: expected a repository id such as your-name/model-name")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        raise ConfigError(f"{what}: the Hub is switched off here (HF_HUB_OFFLINE is set); nothing was run. Unset "
                          "it, or drop --push-to-hub and push the folder later with `huggingface-cli upload`")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ConfigError(f"{what}: not logged in to the Hub; nothing was run. Run `huggingface-cli login` (or set "
                          "HF_TOKEN) first")
    url = f"{endpoint()}/api/whoami-v2"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(f"{what}: the Hub refused the token ({e.code}); nothing was run. Run "
                              "`huggingface-cli login` with a token that can write") from None
        raise ConfigError(f"{what}: {url} answered {e.code}; nothing was run") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"{what}: the Hub ({endpoint()}) is not reachable ({reason}); nothing was run. Check the "
                          "network, or drop --push-to-hub and push the folder later with `huggingface-cli upload`"
                          ) from None


def push_folder(folder: str | Path, repo_id: str, *, repo_type: str = "model") -> str:
    """Upload `folder` (model/ with its card, or a pairs folder with its card) to `repo_id`; returns its URL.
    A failure leaves the folder as it is and says how to upload it by hand."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint())
    try:
        api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                          commit_message=f"deltalearn: {Path(folder).name}")
    except Exception as e:  # noqa: BLE001 - any hub failure: the local folder is complete, say so
        flag = " --repo-type dataset" if repo_type == "dataset" else ""
        raise DataError(folder, f"push to {repo_id} failed ({type(e).__name__}: {e}); the folder is complete on "
                        f"disk: upload it later with `huggingface-cli upload {repo_id} {folder}{flag}`") from None
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{endpoint()}/{prefix}{repo_id}"


# ---------------------------------------------------------------------------------------------------------
# Pairs from the Hub, and TRL's implicit-prompt rows
# ---------------------------------------------------------------------------------------------------------


def is_hub_dataset_id(spec) -> bool:
    """`ORG/NAME` that is not a path on disk (and has no data-file suffix)."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    text = str(spec)
    return (not Path(text).exists() and bool(REPO_ID.match(text))
            and not text.lower().endswith((".jsonl", ".json", ".parquet", ".csv", ".tsv")))


def load_hub_pairs(repo_id: str, split: str = "train") -> list[dict]:
    """Rows of a Hub preference dataset's split, through `datasets.load_dataset` (cached as datasets caches)."""
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:  # noqa: BLE001 - every failure becomes one message naming the dataset and split
        offline = any(os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        why = ("the Hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local "
               "cache" if offline else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise DataError(repo_id, f"could not load split '{split}' of this Hub dataset ({why}). A local file or "
                        "folder of that name does not exist either") from None
    return ds.to_list()


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def split_implicit_prompt(rows: list[dict], source: str | None = None) -> list[dict]:
    """TRL's implicit-prompt form: no `prompt` column, `chosen` and `rejected` are whole conversations that share
    the prompt's messages. The common leading messages become the prompt; the rest, each side's response. Rows
    with a prompt are left as they are."""
    out = []
    for i, row in enumerate(rows):
        if "prompt" in row or not (_is_messages(row.get("chosen")) and _is_messages(row.get("rejected"))):
            out.append(row)
            continue
        chosen, rejected = row["chosen"], row["rejected"]
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            raise DataError(source, "no prompt column, and chosen and rejected share no leading messages, so the "
                            "prompt cannot be split off (TRL's implicit-prompt rows start with the same prompt)",
                            row=i + 1, field="prompt")
        out.append({**row, "prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]})
    return out
