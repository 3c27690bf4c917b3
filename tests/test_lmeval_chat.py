"""lm-eval as the paper's evaluations ran it: chat models prompted through their chat template (on by default for
a model that has one, recorded), few-shot examples as earlier turns, each preset task with its own shots."""

import pytest

from deltalearn.lmeval import TULU3_DEV, benchmark_table, preset_shots


def test_the_shipped_local_task_through_the_chat_template_with_its_shots():
    pytest.importorskip("lm_eval")
    from deltalearn.lmeval import run_lm_eval

    res = run_lm_eval("smollm2-135m", ["local:tiny_facts"], limit=3, batch_size=8, num_fewshot=2)
    s = res["settings"]
    assert s["apply_chat_template"] is True and s["fewshot_as_multiturn"] is True  # default: the model has one
    assert s["n_shot"]["deltalearn_tiny_facts"] == 2
    seen = s["first_request"]["deltalearn_tiny_facts"]
    # SmolLM2's template, the two shots as earlier user/assistant turns, then the question
    assert seen.startswith("<|im_start|>")
    assert seen.count("<|im_start|>user") == 3 and seen.count("<|im_start|>assistant") == 3
    assert seen.count("Question:") == 3
    assert res["metrics"]["lm_eval/deltalearn_tiny_facts/acc"]["n"] == 3
    plain = run_lm_eval("smollm2-135m", ["local:tiny_facts"], limit=3, batch_size=8, num_fewshot=0,
                        apply_chat_template=False)
    seen = plain["settings"]["first_request"]["deltalearn_tiny_facts"]
    assert "<|im_start|>" not in seen and seen.startswith("Question:") and plain["settings"]["n_shot"][
        "deltalearn_tiny_facts"] == 0


def test_preset_tasks_get_their_own_shots_and_the_table_says_what_ran():
    shots = preset_shots(["preset:tulu3-dev"])
    assert shots["gsm8k_cot"] == 8 and shots["minerva_math"] == 4 and shots["bbh_cot_fewshot"] == 3
    assert shots["truthfulqa_mc2"] == 6 and shots["drop"] == 3 and shots["ifeval"] == 0
    table = benchmark_table(["preset:tulu3-dev"], {"lm_eval/gsm8k_cot/exact_match[flexible-extract]": {"mean": 1}})
    assert len(table) == len(TULU3_DEV) == 11
    assert table["GSM8K"].startswith("ran: gsm8k_cot, 8-shot")
    assert table["AlpacaEval 2"].startswith("not run") and table["PopQA"].startswith("not run")
    assert table["MMLU"] == "not run (no result for mmlu)"
