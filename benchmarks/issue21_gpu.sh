#!/bin/bash
# Issue 21 (FadeMem-FT) on one H200, two device calls (hard limit 600 s each).
#   bash benchmarks/issue21_gpu.sh train   # fine-tune (or continue: --resume) the LoRA for ~480 s
#   bash benchmarks/issue21_gpu.sh bench   # FT vs training-free FadeMem, sink, full, window: bench memory v2
#   bash benchmarks/issue21_gpu.sh round   # both in one call: train ISSUE21_SECONDS (300), then FT vs TF only
# ISSUE21_HISTORY=self: histories are the model's own rollouts after a 2 s true opening (Self-Forcing)
#   bash benchmarks/issue21_gpu.sh realsize  # 3 FadeMem-FT steps at the Wan 1.3B config (random weights, 480x832,
#                                            # 20 s history), without and with gradient checkpointing (~2-4 min)
# The LoRA resumed is the shipped one, fademem/assets/fademem_ft_lora, if trained on the shipped model; a call's LoRA comes back in $OUT/ft_lora
# (copy it there and commit it when it is better; its training record: docs/results/).
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-out/issue21}
LORA=fademem/assets/fademem_ft_lora
mkdir -p "$OUT"
resume() {  # continue the shipped LoRA only if it was trained on the shipped model (a new model: a fresh LoRA)
  RESUME=()
  [ -f "$LORA/adapter_config.json" ] || return 0
  if python3 -c "import json, sys; from fademem import embedded; from fademem.wan.fingerprint import recorded_digest, \
weights_digest; r = recorded_digest(json.load(open('$LORA/adapter_config.json'))); \
sys.exit(r is not None and r != weights_digest(embedded.load().model))"; then RESUME=(--resume "$LORA")
  else echo "$LORA was trained on another base model: a fresh LoRA" >&2; fi
}
case "$1" in
  train)
    resume
    timeout -s INT -k 15 570 python3 -m fademem.cli finetune --device cuda --memory fademem:budget=12 \
      --teacher training/embedded_v2/teacher.safetensors --steps 100000 --time-limit "${ISSUE21_SECONDS:-480}" \
      --batch 8 --seconds 16 --revisit-p 0.6 --history "${ISSUE21_HISTORY:-true}" --log-every 25 "${RESUME[@]}" --out "$OUT/ft_lora" 2>&1 | tee "$OUT/train.log"
    ;;
  bench)
    timeout -s INT -k 15 560 python3 -m fademem.cli bench memory --device cuda \
      --critic training/embedded_v2/critic.safetensors --episodes 48 --seconds 60 --no-progress --time-budget 520 \
      --policies "fademem,fademem:budget=12,lora=$LORA,sink,full,window" --out "$OUT/memory" 2>&1 \
      | tee "$OUT/bench.log" | grep -v "^skipped benchmark scene"
    ;;
  round)
    resume
    timeout -s INT -k 15 $(( ${ISSUE21_SECONDS:-300} + 60 )) python3 -m fademem.cli finetune --device cuda \
      --memory fademem:budget=12 --teacher training/embedded_v2/teacher.safetensors --steps 100000 \
      --time-limit "${ISSUE21_SECONDS:-300}" --batch 8 --seconds 16 --revisit-p 0.6 --history "${ISSUE21_HISTORY:-true}" --log-every 25 "${RESUME[@]}" \
      --out "$OUT/ft_lora" 2>&1 | tee "$OUT/train.log"
    timeout -s INT -k 15 "${ISSUE21_BENCH_LIMIT:-170}" python3 -m fademem.cli bench memory --device cuda \
      --critic training/embedded_v2/critic.safetensors --episodes 48 --seconds 60 --no-progress \
      --policies "fademem,fademem:budget=12,lora=$OUT/ft_lora" --out "$OUT/memory" 2>&1 \
      | tee "$OUT/bench.log" | grep -v "^skipped benchmark scene"
    ;;
  realsize)
    timeout -s INT -k 15 300 python3 benchmarks/finetune_wan_step.py --config 1.3b --device cuda \
      --history-seconds 20 --steps 3 --out "$OUT/ft_wan_step.json" 2>&1 | tee "$OUT/ft_wan_step.log"
    ;;
  *) echo "usage: $0 train|bench|round|realsize" >&2; exit 2 ;;
esac
