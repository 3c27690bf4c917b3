#!/usr/bin/env bash
# One real-model row for issue 32: SmolLM2-135M-Instruct's own greedy answers over copies of them cut short
# (`--rule corrupt --corruption truncate --strength 0.5`), dpo_norm, held-out prompts, paired against the base.
# The utility measures what the corruption broke: response length in words (`response_words`).
#   bash benchmarks/corrupt_smollm2.sh [OUT]      (fp32; ~32 train prompts, 8 steps, 32 eval prompts)
set -euo pipefail
OUT=${1:-runs/corrupt-smollm2}
N_TRAIN=${N_TRAIN:-32}
N_EVAL=${N_EVAL:-32}
TOKENS=${TOKENS:-96}
PY=${PY:-python}
DL="$PY -m deltalearn.cli"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "$OUT"
# 1. own answers on train-split prompts (greedy)
$DL generate --models smollm2-135m --prompts builtin:sections_prompts --split train --limit "$N_TRAIN" \
  --id-column id --max-new-tokens "$TOKENS" --batch-size 16 --precision fp32 --out "$OUT/gens" --no-progress
# 2. own > own cut short (half the words removed); answers cut at TOKENS are kept (most answers are longer)
$DL pair --generations "$OUT/gens" --rule corrupt --corruption truncate --strength 0.5 --seed 0 --keep-truncated \
  --out "$OUT/pairs" --export jsonl --no-progress
# 3. dpo_norm on the pairs (fp32: bf16 is emulated on AVX2-only CPUs)
$DL train --pairs "$OUT/pairs" --out "$OUT/dpo" --model smollm2-135m --loss dpo_norm --precision fp32 \
  --set train.lr=1.0e-5 --set train.batch_size=8 --set train.micro_batch_size=4 --set train.max_steps=8 \
  --set train.max_len=320 --set train.warmup_ratio=0.1 --no-progress
# 4. held-out eval prompts: base and tuned, per-prompt scores
for m in base dpo; do
  model=$([ $m = base ] && echo smollm2-135m || echo "$OUT/dpo/model")
  $DL eval --model "$model" --prompts builtin:sections_prompts --split eval --limit "$N_EVAL" --id-column id \
    --utilities response_words --max-new-tokens "$TOKENS" --batch-size 16 --precision fp32 --out "$OUT" \
    --label $m --no-progress
done
# 5. paired difference (tuned - base) on the same prompts
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from deltalearn.stats import paired_diff
out = Path(sys.argv[1])
def scores(label):
    r = json.loads((out / "eval" / f"{label}.json").read_text())
    k = "utility/response_words"
    return dict(zip(r["items"]["ids"][k], r["items"]["scores"][k]))
b, d = scores("base"), scores("dpo")
ids = sorted(b)
diff, se = paired_diff([b[i] for i in ids], [d[i] for i in ids])
print(f"response_words: base {sum(b.values()) / len(b):.1f}, dpo {sum(d.values()) / len(d):.1f}, "
      f"paired diff {diff:+.2f} +- {se:.2f} words ({len(ids)} held-out prompts)")
EOF
