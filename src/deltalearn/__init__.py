"""deltalearn: preference tuning on pairs of weak responses (delta learning; Geng et al., COLM 2025).

    import deltalearn as dl
    rows = dl.generate("smollm2-135m", "builtin:sections_prompts", "gen/smol.jsonl", max_new_tokens=64)
    pairs, summary = dl.make_pairs({"a": rows_a, "b": rows_b}, rule="columns", chosen="a", rejected="b")
    result = dl.train(pairs, "runs/x", model="smollm2-135m", loss="dpo_norm", lr=1e-5)
    dl.evaluate(result["model_dir"], "runs/x", prompts="builtin:sections_prompts", utilities=["bold_sections"])
    dl.run("recipes/sections-smollm2.yaml")

The functions live in `deltalearn.api` and are imported on first use, so `import deltalearn` loads no torch.
"""

from __future__ import annotations

import types as _types

_API = ("generate", "make_pairs", "train", "evaluate", "run", "load_prompts")
__all__ = list(_API)


class _Package(_types.ModuleType):
    # `dl.train`, `dl.generate` and `dl.evaluate` share their names with submodules, and importing a submodule
    # sets it as an attribute of the package; so the API names are resolved here, before the module dict.
    # (`import deltalearn.train` and `from deltalearn.train import ...` still reach the modules via sys.modules.)
    def __getattribute__(self, name: str):
        if name in _API:
            from deltalearn import api

            return getattr(api, name)
        return super().__getattribute__(name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_API))


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package
