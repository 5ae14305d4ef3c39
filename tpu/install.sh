#!/usr/bin/env bash
# Copy this checkout to every worker of the slice and install jaxrlhf with TPU JAX.
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}"
cd "$(dirname "$0")/.."
tar --exclude=.git --exclude=runs --exclude=.venv -czf /tmp/jaxrlhf.tgz .
gcloud compute tpus tpu-vm scp /tmp/jaxrlhf.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "mkdir -p ~/jaxrlhf && tar -xzf ~/jaxrlhf.tgz -C ~/jaxrlhf && cd ~/jaxrlhf && \
   python3 -m pip install -q 'jax[tpu]' && python3 -m pip install -q ."
