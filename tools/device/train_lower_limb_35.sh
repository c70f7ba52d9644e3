#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the repository root, by one `run` call (tools/device/README.md):
#
#   BUDGET_S=480 bash tools/device/train_lower_limb_35.sh        # carry: [".whl", ".device_data"]
#
# Trains lower_limb_35 from the anatomical atlas plus the real DTI calf (train.json +
# train_atlas.json + train_atlas_calf.json): stage 1, then stage 2 for every muscle, until the
# wall-clock budget BUDGET_S (counted from this script's start) runs out. The trainer saves
# stage1.pt and each stage2_<muscle>.pt as it finishes them; whatever finished is packed with
# cascade.json, the log and the measured iterations/s into $OUT/ll35_weights.tar.gz (split into
# ll35_weights.tar.gz.partNN when over PACK_LIMIT_MIB: 36 networks are ~20 MB, and the tool
# brings back files of at most 16 MiB) — also when the budget ran out. The whole output is also
# written to $OUT/train_lower_limb_35.log.
#
# Environment (defaults in brackets):
#   DEVICE [cuda]            cpu for a dry run
#   BUDGET_S [480]           seconds from the script's start to the end of training; packing
#                            takes a few more: give the run call timeout_s >= BUDGET_S + 60
#   STAGE1_ITERATIONS [1500]
#   STAGE2_ITERATIONS [auto] per muscle; auto: what fits the budget left after stage 1, from
#                            stage 1's measured s/iteration (ll35_kit.py plan-stage2), clamped to
#                            [STAGE2_MIN_ITERATIONS 100, STAGE2_MAX_ITERATIONS 1000]
#   STAGE2_COST_RATIO [38]   stage-2 cost of one iteration of all 35 muscles / a stage-1 iteration
#   STAGE2_OVERHEAD_S [3]    seconds per muscle outside its training loop (workers' fork, save)
#   NUM_WORKERS [nproc - 2]  processes that synthesise the samples (14 on the 16-core machine)
#   MUSCLES [all]            space-separated stage-2 muscles (one process each); empty: all 35
#   STAGE1_PROBE_SAMPLES [2], STAGE2_PROBE_SAMPLES [0]  loss before/after on fixed samples per
#                            source (drawn in the main process: ~1-3 s per muscle, so off for stage 2)
#   EXTRA_SETS []            more overrides, space-separated ID=VALUE words ("trainer#batch_size=4")
#   PYTHON [python3]         the interpreter (the GPU machine's holds torch)
#   SKIP_WHEELS [0]          1: do not install .whl/ (here: PYTHON=.venv/bin/python SKIP_WHEELS=1)
#   WHEEL_DIR [.whl], SITE [/tmp/site]   wheels and where they are installed (on PYTHONPATH)
#   DATA_ROOT [.device_data], ATLAS_CACHE [$DATA_ROOT/atlas_cache]  (prepare.sh builds the cache)
#   BUNDLE [$DATA_ROOT/lower_limb_35]  prepare.sh's copy of lower_limb_35's configs with
#                            bias_correction null (the GPU machine has no SimpleITK for N4); the
#                            real calf comes N4-corrected in .device_data. The weights are for the
#                            shipped bundle, whose inference runs N4 as its training data had it
#   RUN_DIR [/tmp/ll35_run]  the weights go to $RUN_DIR/models (emptied first)
#   OUT                      required: where the packed weights and the log go
#   PACK_LIMIT_MIB [15]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
T0=$SECONDS

: "${OUT:?OUT must name the folder for the packed weights (the device tool sets it)}"
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-480}
STAGE1_ITERATIONS=${STAGE1_ITERATIONS:-1500}
STAGE2_ITERATIONS=${STAGE2_ITERATIONS:-auto}
STAGE2_MIN_ITERATIONS=${STAGE2_MIN_ITERATIONS:-100}
STAGE2_MAX_ITERATIONS=${STAGE2_MAX_ITERATIONS:-1000}
STAGE2_COST_RATIO=${STAGE2_COST_RATIO:-38}
STAGE2_OVERHEAD_S=${STAGE2_OVERHEAD_S:-3}
NCPU=$(nproc)
NUM_WORKERS=${NUM_WORKERS:-$((NCPU > 3 ? NCPU - 2 : 1))}
MUSCLES=${MUSCLES:-}
STAGE1_PROBE_SAMPLES=${STAGE1_PROBE_SAMPLES:-2}
STAGE2_PROBE_SAMPLES=${STAGE2_PROBE_SAMPLES:-0}
EXTRA_SETS=${EXTRA_SETS:-}
PYTHON=${PYTHON:-python3}
SKIP_WHEELS=${SKIP_WHEELS:-0}
WHEEL_DIR=${WHEEL_DIR:-$REPO/.whl}
SITE=${SITE:-/tmp/site}
DATA_ROOT=${DATA_ROOT:-$REPO/.device_data}
ATLAS_CACHE=${ATLAS_CACHE:-$DATA_ROOT/atlas_cache}
RUN_DIR=${RUN_DIR:-/tmp/ll35_run}
# prepare.sh's device bundle (bias_correction null, the real calf N4-corrected beforehand): the
# machine has no SimpleITK; the shipped bundle would run N4 on the real calf and fail there
BUNDLE=${BUNDLE:-$DATA_ROOT/lower_limb_35}
PACK_LIMIT_MIB=${PACK_LIMIT_MIB:-15}
MODELS=$RUN_DIR/models
KIT=$REPO/tools/device/ll35_kit.py
export PYTHONUNBUFFERED=1 MUSCLE_PIPELINE_SHARED_DATA=$DATA_ROOT

mkdir -p "$OUT" "$RUN_DIR"
rm -rf -- "$MODELS"
mkdir -p "$MODELS"
LOG=$OUT/train_lower_limb_35.log
exec > >(tee -a "$LOG") 2>&1

elapsed() { echo $((SECONDS - T0)); }
remaining() { echo $((BUDGET_S - (SECONDS - T0))); }
say() { echo "[kit $(date +%H:%M:%S) +$(elapsed)s] $*"; }

say "lower_limb_35 from the atlas: DEVICE=$DEVICE BUDGET_S=$BUDGET_S STAGE1_ITERATIONS=$STAGE1_ITERATIONS" \
    "STAGE2_ITERATIONS=$STAGE2_ITERATIONS NUM_WORKERS=$NUM_WORKERS MUSCLES=${MUSCLES:-all} RUN_DIR=$RUN_DIR"

# --- the machine and the Python packages --------------------------------------------------------
nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
echo "cpus: nproc $NCPU; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
df -h /dev/shm | tail -1 | awk '{print "/dev/shm: " $2 " (DataLoader workers pass samples through it)"}'
if [ "$SKIP_WHEELS" != 1 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEEL_DIR"/*.whl || { say "FAIL: the wheels in $WHEEL_DIR did not install"; exit 3; }
    export PYTHONPATH="$SITE:$REPO"
    say "wheels installed into $SITE"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" - "$DEVICE" <<'EOF' || { say "FAIL: the training path does not import, or the device is missing"; exit 3; }
import os, sys, platform
import torch, numpy, monai, nibabel, cc3d, pydicom, jsonschema
import muscle_pipeline.cascade.training, muscle_pipeline.atlas, muscle_pipeline.losses  # noqa: F401
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
print(f"numpy {numpy.__version__}, monai {monai.__version__}, nibabel {nibabel.__version__}; "
      f"os.cpu_count {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}")
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE is cuda but torch sees no GPU")
EOF

# --- training -----------------------------------------------------------------------------------
if [ ! -d "$BUNDLE/configs" ]; then
    say "FAIL: no bundle $BUNDLE (run tools/device/prepare.sh here first, or set BUNDLE)"
    exit 3
fi
say "bundle: $BUNDLE (bias_correction: $(grep -o '"bias_correction": [a-z{]*' "$BUNDLE/configs/inference.json"))"
COMMON=("$BUNDLE" --config train_atlas --config train_atlas_calf -o "$MODELS"
        --set "data_root=$DATA_ROOT" --set "atlas_cache=$ATLAS_CACHE" --set "device=$DEVICE"
        --set "num_workers=$NUM_WORKERS" --set "trainer#stage1_iterations=$STAGE1_ITERATIONS")
for kv in $EXTRA_SETS; do COMMON+=(--set "$kv"); done

train() {  # train <label> <more --set args...>: under the budget left; returns the trainer's status
    local label=$1 left rc
    shift
    left=$(remaining)
    if [ "$left" -lt 10 ]; then
        say "$label: not started, the budget is spent"
        return 124
    fi
    say "$label: start (budget left ${left}s)"
    # timeout signals its whole process group: the DataLoader workers end with the trainer
    timeout -k 15 "$left" "$PYTHON" -m muscle_pipeline train "${COMMON[@]}" "$@"
    rc=$?
    case $rc in
        0) say "$label: done" ;;
        124 | 137) say "$label: STOPPED by the budget (status $rc)" ;;
        *) say "$label: FAILED (status $rc)" ;;
    esac
    return $rc
}

STATUS=0
t=$SECONDS
train "stage 1" --set stage=1 --set "trainer#probe_samples=$STAGE1_PROBE_SAMPLES"
rc1=$?
STAGE1_WALL=$((SECONDS - t))
"$PYTHON" "$KIT" rates "$LOG" | grep "^rates: stage 1" || true
if [ $rc1 -eq 0 ]; then
    read -r -a LIST <<<"$MUSCLES"
    n=${#LIST[@]}
    procs=1
    [ "$n" -gt 0 ] && procs=$n
    [ "$n" -eq 0 ] && n=35
    N2=$STAGE2_ITERATIONS
    if [ "$N2" = auto ]; then
        N2=$("$PYTHON" "$KIT" plan-stage2 "$LOG" --remaining "$(remaining)" --stage1-wall "$STAGE1_WALL" \
            --muscles "$n" --processes "$procs" --ratio "$STAGE2_COST_RATIO" --overhead "$STAGE2_OVERHEAD_S" \
            --min "$STAGE2_MIN_ITERATIONS" --max "$STAGE2_MAX_ITERATIONS") || N2=$STAGE2_MIN_ITERATIONS
    fi
    say "stage 2: $N2 iterations per muscle"
    S2=(--set stage=2 --set "trainer#stage2_iterations=$N2" --set "trainer#probe_samples=$STAGE2_PROBE_SAMPLES")
    if [ ${#LIST[@]} -eq 0 ]; then
        train "stage 2 (all muscles)" "${S2[@]}" || STATUS=$?
    else
        for m in "${LIST[@]}"; do
            train "stage 2 $m" "${S2[@]}" --set "muscle=$m" || { STATUS=$?; break; }
        done
    fi
else
    STATUS=$rc1
    say "stage 2: skipped (stage 1 did not finish)"
fi

# --- pack whatever finished ---------------------------------------------------------------------
say "packing"
"$PYTHON" "$KIT" rates "$LOG" --tsv "$MODELS/rates.tsv"
"$PYTHON" "$KIT" finish "$MODELS" --bundle-config "$REPO/bundles/lower_limb_35/configs/inference.json" \
    --muscles "$MUSCLES" || say "finish step failed: cascade.json is as the trainer left it"
rm -f "$MODELS/.cascade.json.lock"
cp "$LOG" "$MODELS/train.log"
tar -C "$MODELS" -czf "$RUN_DIR/ll35_weights.tar.gz" .
size=$(stat -c %s "$RUN_DIR/ll35_weights.tar.gz")
rm -f "$OUT"/ll35_weights.tar.gz*
if [ "$size" -le $((PACK_LIMIT_MIB * 1048576)) ]; then
    cp "$RUN_DIR/ll35_weights.tar.gz" "$OUT/"
else  # the tool brings back files of at most 16 MiB: cat ll35_weights.tar.gz.part* | tar -xz
    split -b "${PACK_LIMIT_MIB}M" -d -a 2 "$RUN_DIR/ll35_weights.tar.gz" "$OUT/ll35_weights.tar.gz.part"
fi
say "packed $(tar -tzf "$RUN_DIR/ll35_weights.tar.gz" | grep -c '\.pt$') weight files, $((size / 1024)) KiB:" \
    "$(cd "$OUT" && ls ll35_weights.tar.gz* | tr '\n' ' ')"
case $STATUS in 0 | 124 | 137) STATUS=0 ;; esac  # a budget that ran out is no failure: the rest is packed
say "end, status $STATUS"
exit $STATUS
