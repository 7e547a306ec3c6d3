#!/bin/bash
# Issue 14 on one H200, one device call (hard limit 600 s): memory benchmark v2 at its GPU default,
# 48 episodes x 60 s, every policy at budget 12, the critic's identity score on revisits.
# bench memory writes its report after every finished policy and on SIGINT, and --time-budget skips a
# policy forecast not to fit, so a call that runs out of time keeps what finished.
# Writes into $OUT/memory: memory.json, memory.txt, memory.png; and $OUT/issue14.log.
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-out/issue14}
mkdir -p "$OUT"
POLICIES=${ISSUE14_POLICIES:-full,window,sink,fademem,memrope,deepforcing,omnimem,memflow,fademem:adaptive=cut}
timeout -s INT -k 15 "${ISSUE14_LIMIT:-560}" python3 -m fademem.cli bench memory --device cuda \
  --critic training/embedded_v2/critic.safetensors --episodes 48 --seconds 60 --no-progress \
  --time-budget "${ISSUE14_BUDGET:-520}" --policies "$POLICIES" --out "$OUT/memory" 2>&1 | tee "$OUT/issue14.log" \
  | grep -v "^skipped benchmark scene"
