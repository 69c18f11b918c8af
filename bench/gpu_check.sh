#!/usr/bin/env bash
# The one GPU run: install, build the CUDA extension, run the benches that answer the GPU performance goals
# (docs/gpu-performance.md), the two hooks, the other bench/bench_*.py, the GPU tests, and write ONE report
# under $OUT:
#   gpu_report.md    card, versions, commit, the goals table (met / NOT met / not measured), every bench table
#   gpu_report.json  the same as data: steps, pytest summaries, every bench document, the goals
#   gpu_check.log    everything printed
# Budget: GPU_CHECK_BUDGET_S (default 460 s, under the 8 minutes one device call should take on an H100/H200,
# build included). Steps run in priority order, each under `timeout` with its own cap cut to what the budget
# leaves; a capped bench keeps the rows it finished (benches rewrite their files as they go).
#
#   GPU_CHECK_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_check.sh    # on the host: pass the commit,
#   GPU_CHECK_COMMIT=abc1234 OUT=/tmp/x bash bench/gpu_check.sh               # the device copy's .git may be stale
#
# Knobs: CAP_<step>=seconds, ARGS_<bench>="extra arguments", GPU_CHECK_SKIP="step ..." (skip steps by name),
# GPU_CHECK_SKIP_INSTALL=1, PYTHON. Bench contract: `python bench/<name>.py --out DIR --name <name> ARGS`
# writes DIR/<name>.json and DIR/<name>.md. Without a GPU the script does a short CPU part (install, CPU
# tests of the new kernels, the tiny-preset profile) so that it can be checked anywhere, and exits 0.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
LOG="$OUT/gpu_check.log"
: >"$LOG"
: >"$WORK/steps"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-460}
SKIP=" ${GPU_CHECK_SKIP:-} "
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}

# The benches of the goals, at the shapes of the goals (paper width 8: d_model 2048, 16,384 tokens a step)
D1024=0.0009765625 D256=0.00390625
ARGS_bench_abstopk=${ARGS_bench_abstopk:-}
ARGS_profile_step=${ARGS_profile_step:---density $D1024 --engines ours paper}
ARGS_bench_spmm=${ARGS_bench_spmm:---tokens 16384 --d-models 2048 768 --densities $D1024 $D256 --rep-ms 30}
ARGS_bench_topk=${ARGS_bench_topk:---presets d2048}
ARGS_bench_train_step=${ARGS_bench_train_step:---steps 8 --densities $D1024 $D256 --engines paper ours}

say() { echo "[gpu_check +$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
cap() {  # cap WANTED [RESERVE]: WANTED seconds, cut to what the budget leaves after RESERVE
  local c=$1 l=$(($(left) - ${2:-15}))
  [ "$l" -lt "$c" ] && c=$l
  [ "$c" -lt 5 ] && c=5
  echo "$c"
}
step() {  # step NAME CAP CMD...: run with a time cap, log output, record rc and seconds
  local name=$1 t=$2 s rc
  shift 2
  case "$SKIP" in *" $name "*) say "$name: skipped (GPU_CHECK_SKIP)"; return 0 ;; esac
  if [ "$(left)" -lt 10 ]; then
    say "$name: skipped (budget spent)"; echo "$name|-1|0|budget spent" >>"$WORK/steps"; return 0
  fi
  say "$name (cap ${t}s): $*"
  s=$(date +%s)
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && say "$name: TIMED OUT after ${t}s"
  say "$name: rc=$rc in $(($(date +%s) - s))s"
  echo "$name|$rc|$(($(date +%s) - s))|$*" >>"$WORK/steps"
  return "$rc"
}
bench() {  # bench NAME CAP: python bench/NAME.py --out WORK --name NAME $ARGS_NAME
  local name=$1 t=$2 avar="ARGS_$1"
  # shellcheck disable=SC2086  # ARGS_<bench> is a word list on purpose
  step "$name" "$(cap "$t" 15)" $PY "bench/$name.py" --out "$WORK" --name "$name" ${!avar:-}
}
capof() { local v="CAP_$1"; echo "${!v:-$2}"; }

# ---------------------------------------------------------------- where and what
HAS_GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>>"$LOG" || echo 0)
COMMIT=${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
# a fingerprint of the code that ran (the device copy's git metadata can be stale): rerun this line on the
# host's checkout of COMMIT and compare
TREE=$(find kernels sparseformer csrc bench tests -type f \( -name '*.py' -o -name '*.cu' -o -name '*.cpp' \
  -o -name '*.h' -o -name '*.sh' \) 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
CARD=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null |
  head -1)
VERS=$($PY -c "import torch, platform, sys; import triton; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, {platform.platform()}')" 2>>"$LOG")
say "repo $ROOT, OUT=$OUT, gpu=$HAS_GPU, budget ${BUDGET}s"
say "card: ${CARD:-none}; $VERS; commit $COMMIT; tree $TREE"
export SPARSEFORMER_COMMIT=$COMMIT     # bench/common.py prefers it to the device copy's git metadata

if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = "1" ]; then
  say "install skipped (GPU_CHECK_SKIP_INSTALL=1)"
else
  step install "$(cap "$(capof install 60)")" env SPARSEFORMER_SKIP_CUDA_BUILD=1 $PY -m pip install --no-deps \
    --no-build-isolation -q -e .
fi

if [ "$HAS_GPU" = "1" ]; then
  # ---------------------------------------------------------------- build (the projection's CUDA kernels)
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)} NVCC_THREADS=${NVCC_THREADS:-4}
  step build_ext "$(cap "$(capof build_ext 150)" 300)" env SPARSEFORMER_FORCE_CUDA_BUILD=1 $PY setup.py -q \
    build_ext --inplace
  if ! $PY -c "from sparseformer.kernels import _C" >>"$LOG" 2>&1; then
    say "prebuilt _C does not import; trying the JIT build"
    step build_jit "$(cap "$(capof build_jit 120)" 300)" $PY -c \
      "from sparseformer.kernels import _ext; _ext.build_jit(verbose=True)" && export SPARSEFORMER_JIT=1
  fi
  $PY -c "from sparseformer.kernels import available; print('backends:', available('cuda'))" 2>&1 | tee -a "$LOG"

  # ---------------------------------------------------------------- the goals' benches, by priority
  bench bench_abstopk "$(capof bench_abstopk 60)"      # AbsTopK kernel vs torch.topk (~25 s)
  bench profile_step "$(capof profile_step 90)"        # the step by category, ours and paper (~50 s)
  bench bench_spmm "$(capof bench_spmm 90)"            # fwd/dX both orientations, roofline, format build
  bench bench_topk "$(capof bench_topk 75)"            # SparseAdamW (+protection) vs fused Adam, projection,
                                                       # then the format emit vs compact (~15 s, kept if cut)
  bench bench_train_step "$(capof bench_train_step 70)"   # the step vs the paper way (~35 s)

  # ---------------------------------------------------------------- HOOKS: at most 60 s together
  # Owners put their command here (or pass it in the variable). A hook may write NAME.json/.md into
  # $GPU_CHECK_WORK with the bench contract; its tables then appear in the report.
  export GPU_CHECK_WORK=$WORK
  # HOOK 1, distributed smoke test (torchrun on the one GPU), at most 30 s:
  HOOK_DISTRIBUTED=${HOOK_DISTRIBUTED:-$PY bench/bench_distributed.py --out $WORK --name bench_distributed --gpu-timeout 28}
  # HOOK 2, the support-dW training step (docs/support-dw.md), at most 30 s: refresh and support steps of
  # the d_model 2048 model at 1/1024 beside paper and ours, then the step time at each refresh interval N
  HOOK_SUPPORT_DW=${HOOK_SUPPORT_DW:-$PY bench/bench_support_dw.py --out $WORK --name bench_support_dw --steps 8 --candidates 0.5 2}
  [ -n "$HOOK_DISTRIBUTED" ] && step hook_distributed "$(cap 30)" bash -c "$HOOK_DISTRIBUTED"
  [ -n "$HOOK_SUPPORT_DW" ] && step hook_support_dw "$(cap "$(capof hook_support_dw 30)")" bash -c "$HOOK_SUPPORT_DW"

  # ---------------------------------------------------------------- every other bench/bench_*.py
  # (e.g. bench_deterministic), CAP_<name> seconds each (default 45), keeping about 90 s for the tests
  GOAL_BENCHES=" bench_abstopk profile_step bench_spmm bench_topk bench_train_step bench_distributed bench_support_dw "
  for b in $(ls bench/bench_*.py | xargs -n1 basename | sed 's/\.py$//'); do
    case "$GOAL_BENCHES" in *" $b "*) continue ;; esac
    [ "$(left)" -lt 120 ] && { say "$b: skipped (budget kept for the tests)"; continue; }
    avar="ARGS_$b"
    # shellcheck disable=SC2086  # ARGS_<bench> is a word list on purpose
    step "$b" "$(cap "$(capof "$b" 45)" 90)" $PY "bench/$b.py" --out "$WORK" --name "$b" ${!avar:-}
  done

  # ---------------------------------------------------------------- GPU tests with what is left
  # few hypothesis examples (profile gpu_check), one autotune config per kernel; the nvcc test is moot after
  # build_ext; the new kernels' tests first
  step tests "$(cap "$(capof tests 110)" 10)" env HYPOTHESIS_PROFILE=gpu_check SPARSEFORMER_AUTOTUNE=0 \
    $PY -m pytest -q -p no:cacheprovider --durations=5 tests/kernels/test_abstopk.py tests/kernels \
    tests/test_optimizer.py tests/test_format_handoff.py -m "not slow" -k "not nvcc"
else
  say "no CUDA device here: CPU part only (install, the new kernels' CPU tests, the tiny-preset profile)"
  step tests_cpu "$(cap 120)" $PY -m pytest -q -p no:cacheprovider tests/kernels/test_abstopk.py tests/bench
  step profile_step "$(cap 120)" $PY bench/profile_step.py --out "$WORK" --name profile_step --warmup 1 \
    --timed 1 --profiled 1 --threads 1
fi

# ---------------------------------------------------------------- one report: markdown + JSON under $OUT
$PY bench/gpu_goals.py "$WORK" >>"$LOG" 2>&1 || say "gpu_goals failed (see the log)"
$PY - "$WORK" "$OUT" "$LOG" "$HAS_GPU" "${CARD:-none}" "$VERS" "$COMMIT" "$TREE" "$BUDGET" <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json, os, re, sys
work, out, log, has_gpu, card, vers, commit, tree, budget = sys.argv[1:10]
has_gpu = has_gpu == "1"
steps = []
for line in open(os.path.join(work, "steps")):
    name, rc, secs, cmd = line.rstrip("\n").split("|", 3)
    steps.append({"step": name, "rc": int(rc), "seconds": int(secs), "cmd": cmd})
text = open(log, errors="replace").read()
summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped).*?)\s*=*$", text, flags=re.M)
failed = re.findall(r"^(?:FAILED|ERROR) (.*)$", text, flags=re.M)
md = ["# GPU check report" + ("" if has_gpu else " (no GPU: CPU part only)"), "",
      f"- card: {card}", f"- {vers}", f"- commit {commit} (tree fingerprint {tree}); budget {budget} s", "",
      "| step | rc | seconds |", "|---|---|---|"] + [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
md += ["", "pytest: " + ("; ".join(summaries) if summaries else "no summary line")]
if failed:
    md += ["", "failed tests:"] + [f"- {f[:200]}" for f in failed[:40]]
goals = os.path.join(work, "gpu_goals.md")
if os.path.exists(goals):
    md += ["", "---", "", open(goals).read()]
benches = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    name = os.path.basename(path)[:-5]
    try:
        benches[name] = json.load(open(path))
    except Exception as e:
        benches[name] = {"error": f"unreadable: {e}"}
    mdp = path[:-5] + ".md"
    if name != "gpu_goals" and os.path.exists(mdp):
        md += ["", "---", "", open(mdp).read()]
doc = {"gpu": has_gpu, "card": card, "versions": vers, "commit": commit, "tree": tree, "steps": steps,
       "pytest": summaries, "failed_tests": failed[:200], "goals": benches.pop("gpu_goals", None), "benches": benches}
for fname, body in (("gpu_report.json", json.dumps(doc, indent=1, default=str)), ("gpu_report.md", "\n".join(md) + "\n")):
    tmp = os.path.join(out, fname + ".tmp")
    open(tmp, "w").write(body)
    os.replace(tmp, os.path.join(out, fname))
print("\n".join(md[: 8 + len(steps)]))
EOF
FAILS=$(awk -F'|' '$2 != 0 && $2 != 5 && $2 != -1' "$WORK/steps" | wc -l)   # 5: no test collected; -1: skipped
rm -rf "$WORK"
say "done ($FAILS failed steps): $OUT/gpu_report.md, $OUT/gpu_report.json, $LOG"
[ "$HAS_GPU" = "1" ] && [ "$FAILS" -gt 0 ] && exit 1
exit 0
