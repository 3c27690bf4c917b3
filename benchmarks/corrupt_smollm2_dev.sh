#!/usr/bin/env bash
# The real-model rows of issue 32 with the lr chosen on dev: SmolLM2-135M-Instruct's own greedy answers over
# corrupted copies of them (`deltalearn pair --rule corrupt`), dpo_norm beta 5, 8 steps of 8 pairs, fp32.
#   prompts (builtin:sections_prompts has no dev split, so one is carved from its train split):
#     train rows 1..N_TRAIN           the pairs are made from these (the student's own answers)
#     train rows N_TRAIN+1..+N_DEV    dev: the lr is chosen here (never trained on; written to OUT/prompts/dev.jsonl)
#     eval rows 1..N_EVAL             held out: one number per corruption at its chosen lr, paired against the base
#   per corruption (CORRUPTIONS="name:strength ...") and lr (LRS, or LRS_<name> for one corruption):
#     train on the train pairs, evaluate on the dev prompts and on dev pairs (the base's dev answers over their
#     copies corrupted the same way: the corruption's delta, as the tuned model's implicit reward sees it).
#   Dev criterion, fixed before the run (benchmarks/corrupt_smollm2_choose.py):
#     an lr "holds up" when its dev answers are not more repetitive and not shorter than the base's beyond 2 s.e.
#     of the paired difference (utility repeated_ngrams: diff - 2 se <= 0; response_words: diff + 2 se >= 0);
#     of those, the highest dev preference accuracy (own over corrupted, implicit reward against the base; ties:
#     the larger margin); if none holds up, the smallest lr.
#   bash benchmarks/corrupt_smollm2_dev.sh [OUT]
# The own answers on the train rows, the base's dev and held-out answers are generated once and shared by every
# arm; rerunning resumes (finished generations, trainings and evals are not redone).
set -euo pipefail
OUT=${1:-runs/corrupt-smollm2-dev}
N_TRAIN=${N_TRAIN:-32}
N_DEV=${N_DEV:-32}
N_EVAL=${N_EVAL:-32}
TOKENS=${TOKENS:-128}
CORRUPTIONS=${CORRUPTIONS:-"drop_sentence:1 truncate:0.5"}
LRS=${LRS:-"1.0e-6 3.0e-6 1.0e-5"}
UTILS=${UTILS:-"response_words sentences repeated_ngrams bold_sections"}
PY=${PY:-python}
DL="$PY -m deltalearn.cli"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
mkdir -p "$OUT/prompts"
TIMES="$OUT/times.tsv"
step() {  # step NAME CMD...: run it, append its wall seconds to times.tsv
  local name=$1 t0; shift; t0=$(date +%s)
  "$@"
  echo -e "$name\t$(( $(date +%s) - t0 ))" >> "$TIMES"
}
ev() {  # ev OUTDIR LABEL MODEL PROMPTS SPLIT [extra eval args]
  local dir=$1 label=$2 model=$3 prompts=$4 split=$5; shift 5
  $DL eval --model "$model" --prompts "$prompts" ${split:+--split "$split"} --id-column id \
    --utilities $UTILS --max-new-tokens "$TOKENS" --batch-size 16 --precision fp32 --out "$dir" --label "$label" \
    --no-progress "$@" > /dev/null
}
$PY - "$OUT/prompts/dev.jsonl" "$N_TRAIN" "$N_DEV" <<'EOF'
import json, sys
from deltalearn.prompts import builtin_path
out, n_train, n_dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in builtin_path("sections_prompts").read_text().splitlines() if l.strip()]
train = [r for r in rows if r.get("split") == "train"]
assert len(train) >= n_train + n_dev, f"sections_prompts has {len(train)} train rows, need {n_train + n_dev}"
with open(out, "w") as f:
    for r in train[n_train:n_train + n_dev]:
        f.write(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n")
EOF
# 1. the student's own answers on the train rows; the base on the dev and the held-out prompts (once)
step gen_train $DL generate --models smollm2-135m --prompts builtin:sections_prompts --split train \
  --limit "$N_TRAIN" --id-column id --max-new-tokens "$TOKENS" --batch-size 16 --precision fp32 --out "$OUT/gens" \
  --no-progress
step eval_base_dev ev "$OUT/dev" base smollm2-135m "$OUT/prompts/dev.jsonl" "" --limit "$N_DEV"
step eval_base_heldout ev "$OUT/heldout" base smollm2-135m builtin:sections_prompts eval --limit "$N_EVAL"
for cs in $CORRUPTIONS; do
  c=${cs%%:*} s=${cs#*:}
  lrs_var="LRS_$c"; lrs=${!lrs_var:-$LRS}
  cargs=(--rule corrupt --corruption "$c" --strength "$s" --seed 0 --keep-truncated --no-progress)
  # 2. own > corrupted own (train rows); the same corruption of the base's dev / held-out answers (eval pairs)
  $DL pair --generations "$OUT/gens" "${cargs[@]}" --out "$OUT/$c/pairs" --export jsonl > /dev/null
  $DL pair --generations "$OUT/dev/eval/base.responses.jsonl" "${cargs[@]}" --out "$OUT/$c/dev-pairs" \
    --export jsonl > /dev/null
  $DL pair --generations "$OUT/heldout/eval/base.responses.jsonl" "${cargs[@]}" --out "$OUT/$c/heldout-pairs" \
    --export jsonl > /dev/null
  # 3. each lr: dpo_norm on the train pairs (fp32: bf16 is emulated on AVX2-only CPUs), then dev
  for lr in $lrs; do
    step "train_${c}_$lr" $DL train --pairs "$OUT/$c/pairs" --out "$OUT/$c/lr$lr" --model smollm2-135m \
      --loss dpo_norm --precision fp32 --set train.lr="$lr" --set train.batch_size=8 \
      --set train.micro_batch_size=4 --set train.max_steps=8 --set train.max_len=320 --set train.warmup_ratio=0.1 \
      --no-progress > /dev/null
    step "dev_${c}_$lr" ev "$OUT/dev" "${c}_lr$lr" "$OUT/$c/lr$lr/model" "$OUT/prompts/dev.jsonl" "" \
      --limit "$N_DEV" --pairs "$OUT/$c/dev-pairs/pairs.jsonl" --reference smollm2-135m --max-len 320
  done
  # 4. the dev criterion picks one lr; only that model sees the held-out prompts
  chosen=$($PY benchmarks/corrupt_smollm2_choose.py "$OUT" "$c" $lrs)
  echo "$c: lr $chosen chosen on dev"
  step "heldout_${c}_$chosen" ev "$OUT/heldout" "$c" "$OUT/$c/lr$chosen/model" builtin:sections_prompts eval \
    --limit "$N_EVAL" --pairs "$OUT/$c/heldout-pairs/pairs.jsonl" --reference smollm2-135m --max-len 320
done
# 5. the tables: dev grid, chosen lrs, held-out paired differences (tuned - base), wall times -> OUT/results.json
$PY benchmarks/corrupt_smollm2_choose.py "$OUT" --report $CORRUPTIONS
