#!/usr/bin/env bash
# The README's walk through every shipped example, command for command: init a tiny model ->
# sft -> rm -> dpo -> ppo -> export every stage -> generate -> score. Runs in a copy of configs/
# and examples/ inside WORK_DIR (default: a new temp folder), so runs/ and exports/ land there.
# tests/test_examples_walk.py checks that the commands below are the README's, in its order.
#
#   examples/walk.sh [WORK_DIR]      (WORK_DIR must be new or empty)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d -t jaxrlhf-walk-XXXXXX)}"
mkdir -p "$work"
if [ -n "$(ls -A "$work")" ]; then
  echo "walk.sh: $work is not empty; give a new or empty folder" >&2
  exit 2
fi
cp -r "$repo/configs" "$repo/examples" "$work/"
cd "$work"
echo "walk.sh: working in $work"
set -x

# --- the README's walk (section "Walk through the examples"), verbatim
jaxrlhf init-model --config configs/init/gpt2-tiny.yaml
jaxrlhf init-model --config configs/init/qwen2-tiny.yaml
jaxrlhf init-model --config configs/init/llama-tiny.yaml
jaxrlhf sft --config configs/sft/example.yaml
jaxrlhf rm --config configs/rm/example.yaml
jaxrlhf dpo --config configs/dpo/example.yaml
jaxrlhf ppo --config configs/ppo/example.yaml
jaxrlhf export runs/sft --out exports/sft
jaxrlhf export runs/rm --out exports/rm
jaxrlhf export runs/dpo --out exports/dpo
jaxrlhf export runs/ppo --out exports/ppo
jaxrlhf export runs/ppo --role critic --out exports/ppo-critic
jaxrlhf generate exports/ppo --prompts examples/prompts_sample.jsonl --out generations.jsonl --max-new-tokens 32
jaxrlhf score exports/rm --data generations.jsonl --out scored.jsonl
# --- end of the README's walk

set +x
echo "walk.sh: done in $work"
