#!/bin/bash
# Issue 14 on one H200, one device call each (hard limit 600 s).
#   bash benchmarks/issue14_gpu.sh [bench]      # memory benchmark v2 at its GPU default: 48 episodes x 60 s, every
#                                               # policy at budget 12, the critic's identity score on revisits
#   bash benchmarks/issue14_gpu.sh compressor   # train the v2 compressor (retrieval pretraining, then generator
#                                               # LoRA), ISSUE14_PRETRAIN (90) + ISSUE14_FINETUNE (200) seconds
#   bash benchmarks/issue14_gpu.sh compressor-bench FILE  # its rows on the same 48 episodes (merge them with
#                                               # `fademem bench memory --merge` into the nine-policy run)
#   bash benchmarks/issue14_gpu.sh student      # `distill`, then the new student scored in the same call: prompt
#                                               # fidelity + continuation (32 held-out episodes), the recall probe
#                                               # (8 scenes) and the README demo's contact sheet, in $OUT/checks.tgz
#   bash benchmarks/issue14_gpu.sh teacher|critic|distill  # one training lease of ISSUE14_MINUTES (7.6) that
#                                               # resumes training/embedded_v2/<stage> (the student: from the
#                                               # teacher); the weights come back in $OUT, split in 15 MiB parts
#                                               # over the device's 16 MiB per file: cat $OUT/X.part_* > X;
#                                               # distill with ISSUE14_RESUME=1 continues the student there
# The tracked tree with the teacher, the candidate student, the shipped student and the shipped compressor is
# over the device's 64 MiB: move the shipped two out of the checkout for a training call, and the teacher and
# the candidate for a benchmark call (training/embedded_v2/README.md).
# bench memory writes its report after every finished policy and on SIGINT, and --time-budget skips a
# policy forecast not to fit, so a call that runs out of time keeps what finished.
export PYTHONUNBUFFERED=1 PYTHONPATH=.
export OUT=${OUT:-out/issue14}
mkdir -p "$OUT"
bench() {  # $1: policies, $2: output folder name
  timeout -s INT -k 15 "${ISSUE14_LIMIT:-560}" python3 -m fademem.cli bench memory --device cuda \
    --critic training/embedded_v2/critic.safetensors --episodes 48 --seconds 60 --no-progress \
    --time-budget "${ISSUE14_BUDGET:-520}" --policies "$1" --out "$OUT/$2" 2>&1 | tee "$OUT/$2.log" \
    | grep -v "^skipped benchmark scene"
}
case "${1:-bench}" in
  bench)
    bench "${ISSUE14_POLICIES:-full,window,sink,fademem,memrope,deepforcing,omnimem,memflow,fademem:adaptive=cut}" memory
    ;;
  compressor)
    P=${ISSUE14_PRETRAIN:-90} F=${ISSUE14_FINETUNE:-200}
    timeout -s INT -k 15 $(( P + F + 90 )) python3 -m fademem.cli train-compressor --device cuda --workers 12 \
      --pretrain-seconds "$P" --finetune-seconds "$F" --out "$OUT/compressor.safetensors" 2>&1 | tee "$OUT/compressor.log"
    ;;
  compressor-bench)
    # equal visible tokens to 12 raw frames: 4 raw (+ up to 3 waiting) + 40 groups of 1/8 frame each (rate 4x4x2)
    W=${2:?usage: $0 compressor-bench FILE}
    bench "compressor:weights=$W,window=4,budget=40,compressor:weights=$W,window=4,budget=40,generator_lora=false" \
      compressor
    ;;
  teacher|critic|distill)
    # teacher: half revisit batches, the DiT compiled (x1.87 per step on an H200 after ~77 s of compiling,
    # docs/results/profile_train_step_h200.json; ISSUE14_COMPILE=0 for eager); distill: guidance 3, half revisit
    # (session 11: text-only first chunks x2.5 as often, and the teacher's guidance after context frames 1.5, not 3:
    # a guided teacher bends what it continues; training/embedded_v2/README.md)
    FC=${ISSUE14_FIRST_CHUNK_P:-0.3}
    EXTRA=(); [ "$1" = teacher ] && EXTRA=(--object-weight "${ISSUE14_OBJECT_WEIGHT:-0.5}" --revisit-p 0.5 --first-chunk-p "$FC")
    [ "$1" = teacher ] && [ "${ISSUE14_COMPILE:-1}" = 1 ] && EXTRA+=(--compile)
    [ "$1" = distill ] && EXTRA=(--guidance 3 --context-guidance "${ISSUE14_CONTEXT_GUIDANCE:-1.5}" --revisit-p 0.5
                                 --first-chunk-p "$FC")
    # distill stays eager by default: compiled, a 5.5 min lease made 359 steps (126 s to the first, recompiles
    # over context lengths, then ~0.35 s per step) against 1,084 eager steps in 6.6 min (session 12)
    [ "$1" = distill ] && [ "${ISSUE14_COMPILE:-0}" = 1 ] && EXTRA+=(--compile)
    [ "$1" = distill ] && [ "${ISSUE14_RESUME:-0}" = 1 ] && EXTRA+=(--resume-student)
    M=${ISSUE14_MINUTES:-7.6}
    START=$(mktemp)  # weights older than this were not written by this lease: they do not go back as if they were
    timeout -s INT -k 15 "$(python3 -c "print(int($M * 60 + 90))")" python3 benchmarks/train_embedded_v2.py \
      --stage "$1" --minutes "$M" --workers 15 "${EXTRA[@]}" --out "$OUT" 2>&1 | tee "$OUT/$1.log" | tail -c 600
    W=training/embedded_v2/$1.safetensors; [ "$1" = distill ] && W=training/embedded_v2/student.safetensors
    if [ "$W" -nt "$START" ]; then split -b 15M "$W" "$OUT/$(basename "$W").part_" && ls -l "$OUT"
    else echo "$1: no weights written by this lease ($W unchanged), nothing split into $OUT" >&2; exit 1; fi
    ;;
  student)
    bash "$0" distill || exit 1  # no new student, nothing to score
    S=training/embedded_v2/student.safetensors C=training/embedded_v2/critic.safetensors
    mkdir -p "$OUT/checks"
    timeout -k 10 150 python3 -m fademem.cli bench fidelity --device cuda --weights "$S" --critic "$C" \
      --episodes 32 --out "$OUT/checks/fidelity" 2>&1 | tail -25
    timeout -k 10 90 python3 benchmarks/recall_probe.py --weights "$S" --scenes 8 --device cuda \
      --out "$OUT/checks/probe.json" 2>&1 | tail -8
    timeout -k 10 90 python3 benchmarks/contact_sheet.py --weights "$S" --seconds 60 --every 5 --device cuda \
      --out "$OUT/checks/demo_sheet.png" 2>&1 | tail -3
    tar czf "$OUT/checks.tgz" -C "$OUT" checks && rm -r "$OUT/checks" && ls -l "$OUT"  # one file back, not six
    ;;
  *) echo "usage: $0 bench|compressor|compressor-bench FILE|teacher|critic|distill|student" >&2; exit 2 ;;
esac
