#!/usr/bin/env bash
# Create a TPU VM slice. Needs: TPU_NAME, ZONE, ACCELERATOR (e.g. v5p-64), RUNTIME (e.g. v2-alpha-tpuv5).
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}" "${ACCELERATOR:?}" "${RUNTIME:?}"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
  --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ${SPOT:+--spot}
