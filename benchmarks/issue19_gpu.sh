#!/bin/bash
# Issue 19 on one H200, one device call (ends by ~ISSUE19_LIMIT = 420 s): `fademem eval run` throughput
# (2 prompts x fademem:budget=12 x seed 0, 60 s at 480x832, the 1.3B config with random weights through
# real checkpoint files) and scoring throughput per VBench-Long dimension (the six models at their published
# sizes, random weights in the published formats). Needs .whl/issue19 (benchmarks/RUN_GPU.md, section 7).
# Writes into $OUT: issue19.json, issue19.log, eval_score.json (when the CLI scoring part ran).
# ISSUE19_TINY=1: tiny models, 2 s, 128x128 on the CPU (checks the logic here in a few minutes).
T0=$(date +%s)
W=${ISSUE19_WHL:-.whl/issue19}
if ls "$W"/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site19 "$W"/*.whl \
    && export PYTHONPATH=/tmp/site19:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/issue19}
WORK=${ISSUE19_WORK:-/tmp/issue19}
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
LOG=$OUT/issue19.log
LIMIT=${ISSUE19_LIMIT:-420}
if [ "${ISSUE19_TINY:-0}" = 1 ]; then
  SECS=${ISSUE19_SECONDS:-2}; GEOM="--seconds $SECS --height 128 --width 128 --dtype float32 --device cpu"
else
  SECS=${ISSUE19_SECONDS:-60}; GEOM="--seconds $SECS --height 480 --width 832 --dtype bfloat16 --device cuda"
fi
H=benchmarks/issue19_eval.py
until_() { echo $(( T0 + $1 - $(date +%s) )); }  # seconds left until T0 + $1
lim() { local t; t=$(until_ "$1"); [ "$t" -lt 5 ] && t=5; echo "$t"; }  # a timeout (0 would mean none)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"; }
stamp "start"
nvidia-smi --query-gpu=name,clocks.sm,memory.used,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
python3 -c "from fademem._compat import hf_ready; hf_ready(); import torch, torchvision, timm, open_clip, pyiqa, diffusers, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'open_clip', open_clip.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -1 | tee -a "$LOG"
python3 -c "import av; print('PyAV', av.__version__)" 2>&1 | tail -1 | tee -a "$LOG"

# 0. random files in the real layouts: the six dimensions' weights at their published sizes, a Wan2.1
#    Diffusers dir (tokenizer, UMT5 with the XXL width and ISSUE19_TEXT_LAYERS (2) of its 24 layers, the
#    Wan2.1 VAE), the 1.3B DiT as one bf16 safetensors file
stamp "part 0: setup"
timeout -s INT -k 15 "$(lim $(( LIMIT * 30 / 100 )))" python3 $H setup --root "$WORK" >> "$LOG" 2>&1
stamp "part 0 done (rc $?)"

# 1. fademem eval run: 2 prompts x fademem:budget=12 x seed 0, every video generated, written and scored
#    on the six dimensions; the store keeps gen_seconds and score_seconds per video
stamp "part 1: fademem eval run"
timeout -s INT -k 15 "$(lim $(( LIMIT * 70 / 100 )))" python3 $H run --root "$WORK" $GEOM >> "$LOG" 2>&1
stamp "part 1 done (rc $?)"

# 2. scoring per dimension on the first generated video (synthetic frames if none): each model loaded
#    alone, a 2 s warm-up clip, then the whole video timed
stamp "part 2: scoring per dimension"
timeout -s INT -k 15 "$(lim $(( LIMIT * 91 / 100 )))" python3 $H score --root "$WORK" $GEOM \
  --time-budget "$(( $(until_ $(( LIMIT * 91 / 100 ))) - 25 ))" >> "$LOG" 2>&1
stamp "part 2 done (rc $?)"

# 3. the CLI as a user runs it (PyAV reads the mp4; models load, all six), if time is left
V=$(find "$WORK/videos" -name '*.mp4' ! -name '*.part.mp4' 2>/dev/null | sort | head -1)
if [ -n "$V" ] && python3 -c "import av" 2> /dev/null && [ "$(until_ $(( LIMIT - 15 )))" -gt 60 ]; then
  stamp "part 3: fademem eval score (CLI)"
  S=$(date +%s%N)
  timeout -s INT -k 10 "$(lim $(( LIMIT - 15 )))" python3 -m fademem.cli eval score "$V" --weights-dir "$WORK/weights" \
    --device "$([ "${ISSUE19_TINY:-0}" = 1 ] && echo cpu || echo cuda)" --out "$OUT/eval_score.json" >> "$LOG" 2>&1 \
    && MS=$(( ($(date +%s%N) - S) / 1000000 )) && echo "$(( MS / 1000 )).$(printf %03d $(( MS % 1000 )))" > "$WORK/cli_score_wall.txt"
  stamp "part 3 done (rc $?)"
else
  stamp "part 3 skipped (no video, no PyAV, or no time)"
fi

python3 $H summary --root "$WORK" $GEOM --out "$OUT/issue19.json" 2>&1 | tee -a "$LOG"
grep -E "Error|Traceback" "$LOG" | grep -v "^ *$" | head -8
stamp "end"
