#!/usr/bin/env bash
# Run HERE (the CPU machine), once, before the GPU run of tools/device/train_lower_limb_35.sh.
#
#   tools/device/prepare.sh              # wheels -> .whl/, data -> .device_data/, size check
#   tools/device/prepare.sh --size-only  # only the size check of what a `run` call would send
#   PY_VERSION=3.11 WHEEL_DIR=/tmp/whl311 tools/device/prepare.sh --wheels-only
#                                        # only the wheels (here: cp311 ones, to rehearse the GPU
#                                        # machine's install in a bare py3.11 venv; see README.md)
#
# 1. Downloads the cp312 wheels the training path needs and the GPU machine lacks (it has torch,
#    numpy, scipy, scikit-image, ... but not MONAI & co.; it cannot reach a registry) into .whl/,
#    and removes any other wheel there (two versions of one package stop the install there).
# 2. Copies the training data into .device_data/ (the data root there): the Visible Human atlas
#    legs and the labelled DTI calf (train_atlas_calf), and builds the completed-atlas cache
#    (.device_data/atlas_cache, ~4 MB) with this project's venv, which saves the GPU run ~30 s.
#    Writes the bundle the GPU trains, .device_data/lower_limb_35 (ll35_kit.py device-bundle):
#    the shipped configs with bias_correction null, the real calf N4-corrected here.
# 3. Prints the size of what travels (git-tracked + untracked-not-ignored files + the carried
#    folders) and fails if it is over MAX_MIB (the tool's limit is 64 MiB).
#
# Environment (defaults in brackets):
#   PY_VERSION [3.12]   Python of the wheels (the GPU machine's python3 is 3.12)
#   WHEEL_DIR [.whl]    where the wheels go
#   DEVICE_DATA [.device_data]            the data root carried to the GPU
#   SOURCE_DATA [<repo>/../shared/data]   where the data is read from here
#   PIP_PYTHON [<repo>/.venv/bin/python]  runs pip download and builds the atlas cache
#   PREBUILD_ATLAS [1]  build .device_data/atlas_cache here (0: the GPU run builds it, ~30 s)
#   COPY_ATLAS_SOURCE [1]  copy the 5.8 MB raw atlas too (0: only the prebuilt cache, which is all
#                       a run needs while muscle_pipeline.atlas's cache VERSION stays the same)
#   CARRY [".whl .device_data"]  the ignored folders the `run` call carries (counted in the size)
#   MAX_MIB [60]        the size guard
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD

PY_VERSION=${PY_VERSION:-3.12}
WHEEL_DIR=${WHEEL_DIR:-.whl}
DEVICE_DATA=${DEVICE_DATA:-.device_data}
SOURCE_DATA=${SOURCE_DATA:-$REPO/../shared/data}
PIP_PYTHON=${PIP_PYTHON:-$REPO/.venv/bin/python}
PREBUILD_ATLAS=${PREBUILD_ATLAS:-1}
COPY_ATLAS_SOURCE=${COPY_ATLAS_SOURCE:-1}
CARRY=${CARRY:-.whl .device_data}
MAX_MIB=${MAX_MIB:-60}

# What the training path imports beyond the GPU machine's packages, pinned to this venv's versions
# (monai as pyproject.toml). `python -m muscle_pipeline train` needs no fire; it is there for
# `python -m monai.bundle run`. isal, SimpleITK, itk, highdicom and pylibjpeg are not imported on
# this path (checked by running the trainer with only these on top of torch/numpy/scipy/skimage).
WHEELS=(
    monai==1.6.1
    nibabel==5.4.2
    connected-components-3d==4.1.1
    pydicom==3.0.2
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    fire==0.7.1
    termcolor==3.3.0
)

travel_size() {
    # tracked + untracked-not-ignored files (as the tool sends them), then each carried path
    local files carried=0 p
    files=$(git ls-files -z --cached --others --exclude-standard | { xargs -0 stat -c %s -- 2>/dev/null || true; } |
            awk '{s += $1} END {printf "%d", s}')
    for p in $CARRY; do
        if [ -e "$p" ]; then
            if ! git check-ignore -q "$p"; then
                echo "prepare: $p is not ignored by git: add '/$p/' to .gitignore (it would travel twice)" >&2
                return 1
            fi
            carried=$((carried + $(du -sb -- "$p" | cut -f1)))
        fi
    done
    if [ -d shared ] && git check-ignore -q shared; then  # a shared/ in the checkout travels too
        carried=$((carried + $(du -sb shared | cut -f1)))
    fi
    local total=$((files + carried))
    awk -v f="$files" -v c="$carried" -v t="$total" -v m="$MAX_MIB" 'BEGIN {
        printf "travels: %.1f MiB of working tree + %.1f MiB carried (%s) = %.1f MiB (guard %s MiB, tool limit 64 MiB)\n",
               f / 1048576, c / 1048576, ENVIRON["CARRY"], t / 1048576, m }'
    if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
        echo "prepare: FAIL: what travels is over ${MAX_MIB} MiB" >&2
        return 1
    fi
}
export CARRY

if [ "${1:-}" = "--size-only" ]; then
    travel_size
    exit
fi

# --- 1. wheels --------------------------------------------------------------------------------
mkdir -p "$WHEEL_DIR"
"$PIP_PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WHEEL_DIR" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
wanted=" "
for w in "${WHEELS[@]}"; do
    wanted+="$(echo "${w%%==*}" | tr 'A-Z-' 'a-z_')-${w##*==} "
done
for f in "$WHEEL_DIR"/*.whl; do
    key=$(basename "$f" | cut -d- -f1-2 | tr 'A-Z' 'a-z')
    case "$wanted" in
        *" $key "*) ;;
        *) echo "prepare: removing $f (not in the pinned list)"; rm -f -- "$f" ;;
    esac
done
n=$(ls "$WHEEL_DIR"/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
    echo "prepare: FAIL: ${#WHEELS[@]} wheels wanted, $n in $WHEEL_DIR" >&2
    exit 1
fi
echo "wheels: $n in $WHEEL_DIR, $(du -sh "$WHEEL_DIR" | cut -f1) (cp${PY_VERSION/./})"
[ "${1:-}" = "--wheels-only" ] && exit 0

# --- 2. data ----------------------------------------------------------------------------------
copy_data() {  # copy_data <relative folder under the data root>
    local src="$SOURCE_DATA/$1" dst="$DEVICE_DATA/$1"
    [ -d "$src" ] || { echo "prepare: FAIL: no $src" >&2; return 1; }
    if [ -e "$dst" ]; then chmod -R u+w "$dst"; rm -rf -- "$dst"; fi
    mkdir -p "$(dirname "$dst")"
    cp -r -- "$src" "$dst"
    chmod -R u+w "$dst"  # shared/data is read-only; the copy must be replaceable next time
}
mkdir -p "$DEVICE_DATA"
copy_data qmritools/calf_dti_labeled_half
if [ "$PREBUILD_ATLAS" = 1 ]; then
    # the cache is read from shared/data's atlas (even if it is not copied)
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PIP_PYTHON" -c '
import sys, time
from muscle_pipeline.atlas import training_entries
t = time.perf_counter()
training_entries(("VHF", "VHM"), spacing=2.0, cache_dir=sys.argv[1], root=sys.argv[2])
print(f"atlas cache: {sys.argv[1]} ({time.perf_counter() - t:.0f} s)")
' "$DEVICE_DATA/atlas_cache" "$SOURCE_DATA/visible_human_lower_limb"
fi
# the bundle the GPU trains: lower_limb_35's configs with bias_correction null and the real calf
# N4-corrected here (N4 is SimpleITK's, 52 MB, which cannot travel); fails unless the trainer's
# arrays of that case are the same as the shipped bundle's
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PIP_PYTHON" tools/device/ll35_kit.py device-bundle \
    "$DEVICE_DATA" "$SOURCE_DATA" 2>&1 | grep -E "device-bundle|Error|error"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "prepare: FAIL: the device bundle" >&2; exit 1; }
if [ "$COPY_ATLAS_SOURCE" = 1 ]; then
    copy_data visible_human_lower_limb
elif [ -e "$DEVICE_DATA/visible_human_lower_limb" ]; then
    chmod -R u+w "$DEVICE_DATA/visible_human_lower_limb"
    rm -rf -- "$DEVICE_DATA/visible_human_lower_limb"
fi
echo "data: $DEVICE_DATA, $(du -sh "$DEVICE_DATA" | cut -f1)"
du -sh "$DEVICE_DATA"/* "$DEVICE_DATA"/qmritools/* | sed 's/^/  /'

# --- 3. size ----------------------------------------------------------------------------------
travel_size
