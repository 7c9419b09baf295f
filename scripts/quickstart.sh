#!/usr/bin/env bash
# The main job on the built-in tiny default, on CPU: data -> train -> export -> evaluate.
#   1. convert the shipped sample rows (reference JSON-lines format) into sharded TFRecords;
#   2. train reasonir_jax/configs/tiny.py on them (the loss falls within a minute or two);
#   3. export the last checkpoint as a Hugging Face LlamaModel directory;
#   4. evaluate the export on the shipped BRIGHT-layout sample, beside the BM25 baseline.
# Re-running starts from scratch; set OUT to keep several runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

OUT=${OUT:-runs/quickstart}
PY=.venv/bin/python
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-true}
ASSETS=reasonir_jax/assets
rm -rf "$OUT"

echo "== 1/4 data: sample rows -> TFRecords"
"$PY" -m reasonir_jax.data.convert --input "$ASSETS/sample_train.jsonl" --output "$OUT/data" \
  --num-shards 4 --name sample --source sample

echo "== 2/4 train: reasonir_jax/configs/tiny.py"
"$PY" -m reasonir_jax.train --config=reasonir_jax/configs/tiny.py --workdir="$OUT/train" \
  "--config.data.sources=sample=$OUT/data/sample-*.tfrecord"

echo "== 3/4 export: Hugging Face LlamaModel"
"$PY" -m reasonir_jax.export --workdir="$OUT/train" --out="$OUT/hf"

echo "== 4/4 evaluate: BRIGHT-layout sample (dense, then BM25)"
"$PY" -m reasonir_jax.eval.bright --model "$OUT/hf" --data "$ASSETS/bright_sample" \
  --out "$OUT/eval" --tasks available --max-length 128 --dtype float32 --cache-dir "$OUT/cache"
"$PY" -m reasonir_jax.eval.bright --retriever bm25 --data "$ASSETS/bright_sample" \
  --out "$OUT/eval_bm25" --tasks available
echo "done: $OUT (train/ holds TensorBoard events, hf/ the export, eval/results.json the scores)"
