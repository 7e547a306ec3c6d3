#!/bin/bash
# Issue 15 on one H200, one device call (hard limit 600 s; this plan ends by ~540 s): end-to-end fps
# compiled vs eager, the FP8 mode (DiT alone and end to end) with its numerical checks, cold-start
# cost, the 24 GB mode, the official LongLive v1.0 pipeline end to end beside ours, and the 14B config.
# Needs .whl/ (torchao 0.17.0, diffusers 0.42.1) and .ref/longlive (benchmarks/RUN_GPU.md, section 4).
# Writes into $OUT: speed.json, official_e2e.json, speed14b.json, issue15.log (4 files).
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/issue15}
mkdir -p "$OUT"
LOG=$OUT/issue15.log
LIMIT=${ISSUE15_LIMIT:-540}
PARTS=${ISSUE15_PARTS:-123}  # e.g. ISSUE15_PARTS=1: part 1 only (the official pipeline and 14B were measured in session 8)
VARIANTS=${ISSUE15_VARIANTS:-eager+e2e,compile+e2e,compile+overlap,compile+vae=cl,fp8+compile+e2e,fp8+compile+vae=cl+overlap,eager,compile,fp8+compile,compile+sdpa=cudnn}
VSECONDS=${ISSUE15_VARIANT_SECONDS:-9}  # longer runs (e.g. 24) give more steady chunks per variant
until_() { echo $(( T0 + $1 - $(date +%s) )); }  # seconds left until T0 + $1
budget() { echo $(( T0 + $1 - $(date +%s) - 10 )); }  # a --time-budget ending by T0 + $1 (its clock starts after imports)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"; }
stamp "start"
nvidia-smi --query-gpu=name,clocks.sm,memory.used,memory.total --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, torchao, diffusers; print('torch', torch.__version__, 'torchao', torchao.__version__, 'diffusers', diffusers.__version__)" 2>&1 | tail -1 | tee -a "$LOG"

# 1. 1.3B, fademem:budget=12, 9 s of video per variant: end to end eager / compiled (DiT + VAE decoder,
#    cold caches) / FP8 + compiled, then DiT only eager / compiled / FP8 + compiled; each with its cold
#    start and a one-forward check against eager; then the 24 GB mode (UMT5-XXL offloaded) end to end.
stamp "part 1: bench speed (variants, low memory)"
# timeout -s INT: a part that overruns (a compile stuck in autotuning, say) is stopped and the bench
# writes what finished (the interrupted variant records where it stopped)
P1_END=$(( LIMIT - 190 )); [ "$PARTS" = 1 ] && P1_END=$(( LIMIT - 15 ))
timeout -s INT -k 15 "$(until_ $P1_END)" python3 -m fademem.cli bench speed --policies "" \
  --variants "$VARIANTS" \
  --variant-policy fademem:budget=12 --variant-seconds "$VSECONDS" --low-memory --low-memory-seconds 6 \
  --time-budget "$(budget $(( P1_END - 5 )))" --no-plot --no-progress --out "$OUT/speed.json" >> "$LOG" 2>&1
stamp "part 1 done (rc $?)"

# 2. official LongLive v1.0 end to end (its DiT + its VAE cached_decode) beside ours, eager and compiled
#    (a second process: our first compiled chunk shows the compile cost with warm caches)
if [[ "$PARTS" == *2* ]] && [ "$(until_ $(( LIMIT - 100 )))" -gt 45 ]; then
  stamp "part 2: official LongLive end to end"
  timeout -s INT -k 10 "$(until_ $(( LIMIT - 95 )))" python3 benchmarks/official_e2e.py --chunks 10 --warmup 4 --time-budget "$(budget $(( LIMIT - 100 )))" \
    --out "$OUT/official_e2e.json" >> "$LOG" 2>&1
  stamp "part 2 done (rc $?)"
else
  stamp "part 2 skipped: time budget"
fi

# 3. the 14B config at size, DiT only, eager: fademem and sink at 15 visible frames (8 chunks, 4 steady)
if [[ "$PARTS" == *3* ]] && [ "$(until_ $(( LIMIT - 5 )))" -gt 70 ]; then
  stamp "part 3: 14B"
  timeout -s INT -k 10 "$(until_ $(( LIMIT )))" python3 -m fademem.cli bench speed --config 14b --policies "fademem:budget=12,sink:budget=12,sink=3" \
    --seconds 6 --warmup 4 --compile none --no-peak --time-budget "$(budget $(( LIMIT - 5 )))" \
    --no-plot --no-progress --out "$OUT/speed14b.json" >> "$LOG" 2>&1
  stamp "part 3 done (rc $?)"
else
  stamp "part 3 skipped: time budget"
fi

python3 benchmarks/issue15_summary.py "$OUT" 2>&1 | tee -a "$LOG"
grep -E "Error|Traceback" "$LOG" | grep -v "^ *$" | head -8
stamp "end"
