#!/bin/bash
# Submits an fmnist study to Slurm: an array job of WORKERS workers, then the report job after it.
#   deploy/slurm/submit.sh STUDY.toml OUT_DIR [WORKERS] [sbatch options ...]
# With --wait among the options, returns when the report is written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
study=${1:?usage: submit.sh STUDY.toml OUT_DIR [WORKERS] [sbatch options]}
out=${2:?usage: submit.sh STUDY.toml OUT_DIR [WORKERS] [sbatch options]}
workers=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
wait_flag=()
opts=()
for o in "$@"; do
  if [ "$o" = "--wait" ]; then wait_flag=(--wait); else opts+=("$o"); fi
done
mkdir -p "$out"
array=$(sbatch --parsable "${opts[@]}" --array=0-$((workers - 1)) --chdir="$out" \
  "$here/study-workers.sbatch" "$(realpath "$study")" "$(realpath "$out")")
array=${array%%;*}
sbatch --parsable "${wait_flag[@]}" "${opts[@]}" --dependency=afterany:"$array" --chdir="$out" \
  "$here/study-report.sbatch" "$(realpath "$study")" "$(realpath "$out")"
