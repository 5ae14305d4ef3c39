#!/usr/bin/env bash
# The benchmark suite on one GPU, at a 1B-class Llama in bfloat16, printed as one table.
#
#   bash benchmarks/gpu.sh                        # every benchmark (about 10-20 min on one H100)
#   bash benchmarks/gpu.sh --quick --benchmarks rm sft    # any run_all.py flag is passed on (and wins)
#
# Model: Llama d=2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocab 32000 (about 1.1B
# parameters, tied embeddings), sequences of 512 tokens. Batches are sized so that every
# runner fits one 80 GB GPU on its own: run_all.py --isolate runs jaxrlhf and each peer in
# separate processes, and JAX allocates GPU memory on demand instead of 75% up front.
# Needs jax with CUDA and this project installed; the peers need torch with CUDA,
# transformers, datasets and trl (a missing one becomes a "skipped" row).
# Every size below can be overridden from the environment (HIDDEN=512 LAYERS=4 ...);
# ALLOW_CPU=1 skips the GPU check (a smoke test of this script on CPU with small sizes).
# First the RM and SFT steps once per attention backend (ATTENTIONS, default "cudnn chunked xla"),
# at SEQ and 2 x SEQ, then the whole suite with model.attention=auto (cudnn in bfloat16 on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAXRLHF_BENCH_CACHE=${JAXRLHF_BENCH_CACHE:-${TMPDIR:-/tmp}/jaxrlhf-bench}

if [[ "${ALLOW_CPU:-0}" != 1 ]] && ! "$PYTHON" -c 'import sys, jax; sys.exit(jax.devices()[0].platform != "gpu")'; then
    echo "gpu.sh: JAX sees no GPU (install jax[cuda12]; ALLOW_CPU=1 runs anyway)" >&2
    exit 1
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())' \
    || echo "gpu.sh: torch not importable: the peer rows will say skipped"

model=(--hidden "${HIDDEN:-2048}" --layers "${LAYERS:-16}" --heads "${HEADS:-32}" --kv-heads "${KV_HEADS:-8}"
       --vocab "${VOCAB:-32000}" --mlp "${MLP:-8192}" --dtype "${DTYPE:-bfloat16}")
rm_sft=(--seq "${SEQ:-512}" --rm-batch "${RM_BATCH:-4}" --k 2 4 --sft-batch "${SFT_BATCH:-8}")
sampler=(--gen-batch "${GEN_BATCH:-32}" --prompt "${PROMPT:-128}" --new "${NEW:-256}")
ppo=(--ppo-batch "${PPO_BATCH:-16}" --ppo-prompt "${PPO_PROMPT:-128}" --ppo-new "${PPO_NEW:-128}")
timing=()  # timed steps / runs / iterations: the scripts' defaults, or fewer with --quick
if [[ -n "${STEPS:-}" ]]; then timing+=(--steps "$STEPS"); fi
if [[ -n "${REPEATS:-}" ]]; then timing+=(--repeats "$REPEATS"); fi
if [[ -n "${ITERATIONS:-}" ]]; then timing+=(--iterations "$ITERATIONS"); fi

# The attention backends side by side on the training steps (ours only; decoding uses xla):
# cuDNN flash attention, the blockwise chunked path and the [T, T]-scores xla path, at SEQ and at
# twice SEQ. ATTENTIONS="" skips this pass; the full suite below runs with model.attention=auto.
for seq in "${SEQ:-512}" "$(( 2 * ${SEQ:-512} ))"; do
    for attention in ${ATTENTIONS-cudnn chunked xla}; do
        echo "== attention=$attention, T=$seq: RM and SFT steps (jaxrlhf only)"
        "$PYTHON" benchmarks/run_all.py --isolate --only jaxrlhf --benchmarks rm sft --attention "$attention" \
            "${model[@]}" "${rm_sft[@]}" --seq "$seq" ${timing[@]+"${timing[@]}"} "$@" \
            || echo "gpu.sh: attention=$attention at T=$seq failed (see above)"
    done
done

exec "$PYTHON" benchmarks/run_all.py --isolate "${model[@]}" "${rm_sft[@]}" "${sampler[@]}" "${ppo[@]}" \
    ${timing[@]+"${timing[@]}"} "$@"
