#!/usr/bin/env bash
# Container entrypoint: the folder job over a mounted input folder.
#   docker run --gpus all -v /data/scans:/input:ro -v /data/out:/output muscle-pipeline:0.1.0 [OPTIONS]
# OPTIONS are passed to `muscle-pipeline segment` (e.g. --model hip_ct --shard 3/10 --overwrite).
# The device defaults to cuda when a GPU is visible, else cpu; --device overrides it.
set -euo pipefail

INPUT_DIR="${MUSCLE_PIPELINE_INPUT:-/input}"
OUTPUT_DIR="${MUSCLE_PIPELINE_OUTPUT:-/output}"
MODEL="${MUSCLE_PIPELINE_MODEL:-calf_mri}"
PYTHON="${MUSCLE_PIPELINE_PYTHON:-python3}"

if [ ! -d "$INPUT_DIR" ]; then
    echo "muscle-pipeline-job: input folder $INPUT_DIR is not mounted (use -v /your/scans:$INPUT_DIR:ro)" >&2
    exit 2
fi
mkdir -p "$OUTPUT_DIR"

args=("$@")
has_device=0
has_model=0
for a in "${args[@]+"${args[@]}"}"; do
    case "$a" in
        --device|--device=*) has_device=1 ;;
        --model|--model=*) has_model=1 ;;
    esac
done
if [ "$has_device" -eq 0 ]; then
    if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        args+=(--device cuda)
    else
        echo "muscle-pipeline-job: no GPU visible, running on the CPU" >&2
        args+=(--device cpu)
    fi
fi
[ "$has_model" -eq 1 ] || args+=(--model "$MODEL")

exec "$PYTHON" -m muscle_pipeline segment "$INPUT_DIR" -o "$OUTPUT_DIR" "${args[@]}"
