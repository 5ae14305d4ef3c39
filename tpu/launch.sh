#!/usr/bin/env bash
# Run a jaxrlhf stage on every worker at once; after a failure or preemption, resume from
# the latest complete checkpoint until the stage exits cleanly.
#   bash tpu/launch.sh rm --config configs/rm/example.yaml --set output_dir=/mnt/shared/runs/rm
set -uo pipefail
: "${TPU_NAME:?}" "${ZONE:?}"
args=$(printf ' %q' "$@")
resume=""
for attempt in $(seq 1 "${MAX_ATTEMPTS:-20}"); do
  echo "== attempt $attempt${resume:+ (resuming)}"
  if gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
      "cd ~/jaxrlhf && python3 -m jaxrlhf.cli --distributed$args $resume"; then
    exit 0
  fi
  resume="--resume"
  sleep "${RETRY_SECONDS:-60}"
done
echo "giving up after ${MAX_ATTEMPTS:-20} attempts" >&2
exit 1
