"""The ``jaxrlhf`` command line: one entry point, one subcommand per job.

Each subcommand module-level pair ``add_<name>(subparsers)`` / ``run_<name>(args)`` keeps
the parser next to what it runs. User errors (bad config, broken checkpoint) print one
line and exit with status 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import time
from pathlib import Path

from jaxrlhf import __version__

log = logging.getLogger("jaxrlhf")

DESCRIPTION = """\
jaxrlhf: RLHF in JAX. Train language models from preferences on a device mesh:
SFT -> reward model (K-wise ranking) -> PPO with a KL leash, with DPO as the offline
baseline. Models are Flax ports of Hugging Face Llama / Qwen2 / GPT-2 that load and
save transformers folders (safetensors).
"""

EPILOG = """\
commands available in this version:
  demo         the length-control experiment end to end: data -> SFT -> RM -> PPO vs DPO
  data         build task data (length-control)
  eval         evaluate a model on a task (length-control)
  sft          supervised fine-tuning (loss on response tokens only)
  rm           train a reward model on ranked answers (K-wise ranking loss)
  dpo          direct preference optimisation against a frozen reference
  ppo          RLHF with PPO against a reward model and/or rule rewards
  grpo, dr_grpo, rloo, reinforce_pp
               the same RL learner with another advantage estimator (presets)
  generate     generate responses for a file of prompts (KV-cache sampler)
  score        score (prompt, answer) rows with a reward model, as training and PPO do
  plan         per-device memory of the RM step and PPO iteration (ahead-of-time compile)
  export       write a training run's checkpoint as a transformers folder
  convert      convert a GGUF checkpoint to a safetensors folder (dequantised)
  init-model   create a randomly initialised model (sharded on the mesh) and save it
               as a Hugging Face folder
  inspect      load a Hugging Face folder onto a mesh: architecture, parameter count,
               per-device memory, and a test forward pass

Run 'jaxrlhf COMMAND --help' for a command's options. Configs are YAML files (see
configs/); any key can be overridden with --set section.key=value.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.dtype=bfloat16 (repeatable)")


# --------------------------------------------------------------------------- init-model


def add_init_model(sub) -> None:
    p = sub.add_parser(
        "init-model", help="create a random model from an architecture and save it",
        description="Create a randomly initialised model directly in its sharded layout on the "
                    "mesh and save it as a Hugging Face folder that transformers loads.",
        epilog="example: jaxrlhf init-model --config configs/init/llama-tiny.yaml "
               "--set output_dir=runs/my-model")
    _add_config_args(p)
    p.add_argument("--tokenizer", metavar="DIR",
                   help="copy this folder's tokenizer into the output (default: a character tokenizer with "
                        "byte fallback, jaxrlhf.data.tokenizers, 360 tokens)")
    p.set_defaults(run=run_init_model)


def run_init_model(args) -> int:
    import jax

    from jaxrlhf.config import (ConfigError, RunConfig, load_config, read_yaml, resolve_path,
                                save_config)
    from jaxrlhf.data.tokenizers import build_char_tokenizer
    from jaxrlhf.models import config_from_hf, create_model, load_tokenizer, save_pretrained
    from jaxrlhf.tokenizer_check import check_tokenizer_fits

    cfg = load_config(RunConfig, args.config, args.overrides)
    if not cfg.model.arch:
        raise ConfigError("init-model needs model.arch: an architecture YAML (see configs/models/)")
    arch_file = resolve_path(cfg.model.arch, args.config)
    arch = config_from_hf(read_yaml(arch_file), strict=True, source=str(arch_file))
    # the folder must work in every stage as saved, so it always gets a tokenizer that fits it
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else build_char_tokenizer()
    check_tokenizer_fits(tokenizer, arch.vocab_size, tokenizer_at=args.tokenizer or "the built char tokenizer",
                         model_at=f"of {arch_file}")
    mesh = _mesh_or_error(cfg.mesh, "mesh")
    log.info("mesh %s over %d %s device(s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
    start = time.perf_counter()
    model = create_model(arch, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                         remat=cfg.model.remat, mesh=mesh, seed=cfg.seed)
    out = save_pretrained(model, cfg.output_dir, tokenizer=tokenizer)
    save_config(cfg, Path(out) / "jaxrlhf_config.yaml")
    n = _param_count(model)
    print(f"saved {arch.model_type} model with {n:,} parameters and a {len(tokenizer)}-token tokenizer to {out} "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


# --------------------------------------------------------------------------- inspect


def add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect", help="load a model folder onto a mesh and report on it",
        description="Load a Hugging Face folder onto the mesh and print its architecture, "
                    "parameter count, how each large tensor is sharded, per-device parameter "
                    "memory, and the result of a test forward pass.")
    p.add_argument("model", metavar="MODEL_DIR", help="Hugging Face folder (config.json + safetensors)")
    p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1",
                   help="mesh sizes, e.g. data=2,fsdp=-1,tensor=2 (-1: the remaining devices)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype")
    p.add_argument("--batch", type=int, default=2, help="batch size of the test forward")
    p.add_argument("--length", type=int, default=16, help="sequence length of the test forward")
    p.set_defaults(run=run_inspect)


def run_inspect(args) -> int:
    import jax
    import numpy as np
    from flax import nnx

    from jaxrlhf.models import from_pretrained
    from jaxrlhf.sharding import per_device_bytes

    mesh = _mesh_from_flag(args.mesh)
    model = from_pretrained(args.model, dtype=args.dtype, mesh=mesh, progress=True)
    c = model.config
    print(f"model      {args.model}: {c.model_type}, {c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}")
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    total = sum(v.get_value().nbytes for _, v in params)
    per_device = sum(per_device_bytes(v.get_value()) for _, v in params)
    print(f"parameters {_param_count(model):,} ({_fmt_bytes(total)})")
    print(f"mesh       {dict(mesh.shape)} on {mesh.size} {jax.devices()[0].platform} device(s)")
    print(f"per device {_fmt_bytes(per_device)} of parameters ({total / max(per_device, 1):.1f}x less "
          "than unsharded)")
    print("largest tensors:")
    largest = sorted(params, key=lambda pv: -pv[1].get_value().nbytes)[:6]
    for path, v in largest:
        a = v.get_value()
        print(f"  {'.'.join(map(str, path)):<40} {str(list(a.shape)):<16} "
              f"{str(a.sharding.spec):<28} {_fmt_bytes(per_device_bytes(a))}/device")

    rng = np.random.default_rng(0)
    ids = rng.integers(0, c.vocab_size, size=(args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m).logits)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        logits = jax.block_until_ready(forward(state, ids, mask))
        compiled = time.perf_counter() - start
        start = time.perf_counter()
        logits = jax.block_until_ready(forward(state, ids, mask))
        ran = time.perf_counter() - start
    finite = bool(np.isfinite(np.asarray(logits)).all())
    print(f"forward    logits {list(logits.shape)}, finite={finite}, "
          f"compile+run {compiled:.2f}s, run {ran * 1e3:.1f} ms")
    return 0 if finite else 1


# --------------------------------------------------------------------------- training stages

from jaxrlhf.stages.registry import STAGES  # noqa: E402  (name -> StageInfo; light: imports no stage)


def _stage_adder(name: str):
    info = STAGES[name]

    def add(sub) -> None:
        example = f"configs/{name}/example.yaml" if info.preset in (None, "ppo") else "configs/ppo/example.yaml"
        p = sub.add_parser(name, help=info.help, description=info.description,
                           epilog=f"example: jaxrlhf {name} --config {example}; every key: jaxrlhf config show {name}")
        _add_config_args(p)
        p.add_argument("--resume", action="store_true",
                       help="continue from the latest complete checkpoint in output_dir")
        p.set_defaults(run=functools.partial(run_stage, name))
    return add


def load_stage_config(name: str, config_file, overrides):
    """A stage's config: its preset's defaults, refined by the YAML file, then by --set."""
    from jaxrlhf.config import apply_overrides, from_dict, merge_dicts, read_yaml

    info = STAGES[name]
    data = merge_dicts(info.defaults(), read_yaml(config_file) if config_file else {})
    source = (str(config_file) if config_file else "defaults") + (" + --set" if overrides else "")
    return from_dict(info.config_type(), apply_overrides(data, list(overrides)), source)


def run_stage(name: str, args) -> int:
    info = STAGES[name]
    cfg = _resolve_files(load_stage_config(name, args.config, args.overrides), args.config)
    results = info.run(cfg, resume=args.resume)
    ev = results.get("eval") or {}
    summary = ", ".join(f"{k} {ev[k]:.4f}" for k in info.summary if k in ev)
    print(f"{name}: {results['steps']} steps; eval {summary or 'n/a'}; saved to {results['final_model']}")
    return 0


def _resolve_files(cfg, config_file):
    """Data, model and tokenizer paths in a config are relative to the working directory,
    or else to the config file's folder. A name that is neither and looks like a Hugging Face
    id resolves through the local HF cache, or the hub when online (jaxrlhf/hub.py): models
    (``org/name``) to their snapshot folder, datasets (``org/name`` or ``org/name:split``;
    split train, test for eval_files) to the split's data files."""
    import dataclasses

    from jaxrlhf.config import resolve_path
    from jaxrlhf.hub import resolve_data_files, resolve_model_path, split_of

    fix = lambda p: str(resolve_path(p, config_file)) if p else p
    fix_model = lambda p: str(resolve_model_path(fix(p))) if p else p

    def fix_data(key: str, names) -> tuple[str, ...]:
        default_split = "test" if key == "eval_files" else "train"
        files = []
        for name in names:
            local = fix(name)
            files += [local] if Path(local).exists() else resolve_data_files(*split_of(name, default_split))
        return tuple(files)

    files = {k: fix_data(k, getattr(cfg.data, k)) for k in ("train_files", "eval_files", "prompt_files")
             if hasattr(cfg.data, k)}
    data = dataclasses.replace(cfg.data, **files)
    model = dataclasses.replace(cfg.model, path=fix_model(cfg.model.path), arch=fix(cfg.model.arch))
    cfg = dataclasses.replace(cfg, data=data, model=model, tokenizer=fix_model(cfg.tokenizer))
    for key in ("reference_path", "critic_path"):
        if getattr(cfg, key, None):
            cfg = dataclasses.replace(cfg, **{key: fix_model(getattr(cfg, key))})
    if getattr(cfg, "rewards", None):
        cfg = dataclasses.replace(cfg, rewards=tuple(dataclasses.replace(r, path=fix_model(r.path))
                                                     for r in cfg.rewards))
    return cfg


# --------------------------------------------------------------------------- export


def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write a training run's model as a transformers folder",
        description="Export a run's checkpoint (default: the latest complete one) as a Hugging "
                    "Face folder: a policy (sft, dpo, ppo and the other RL stages: the exported weights, "
                    "the moving average when averaging was on) as *ForCausalLM, a reward model or an RL "
                    "run's critic (--role critic) as *ForSequenceClassification (num_labels=1).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a training run")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="convert weights on export (default: as trained)")
    p.add_argument("--role", choices=["policy", "critic"], default="policy",
                   help="an RL run's policy (default) or its critic")
    p.add_argument("--overwrite", action="store_true",
                   help="write --out even if it is a folder jaxrlhf did not write or lies in an input model folder")
    p.set_defaults(run=run_export)


def _model_folders(config: dict) -> list[str]:
    """Every folder a run config reads a model or tokenizer from (model.path, tokenizer,
    reference_path, critic_path, each reward's path), wherever the stage keeps it."""
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += _model_folders(value)
        elif isinstance(value, list):
            found += [f for v in value if isinstance(v, dict) for f in _model_folders(v)]
        elif isinstance(value, str) and (key in ("path", "tokenizer") or key.endswith("_path")):
            found.append(value)
    return found


def run_export(args) -> int:
    import shutil
    import tempfile

    from jaxrlhf.config import ConfigError, read_yaml
    from jaxrlhf.paths import check_output, replace_folder
    from jaxrlhf.stages.export import export_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir / 'config.yaml'}: not found (is {run_dir} a training run folder?)")
    out = check_output(args.out, folder=True, overwrite=args.overwrite,
                       input_model_dirs=(*_model_folders(read_yaml(run_dir / "config.yaml")), run_dir / "checkpoints"))
    # written beside --out first, then moved in: a failed export leaves --out as it was, and a
    # replaced folder keeps no stale shard, index or config of what it held before
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        export_run(run_dir, staging, step=args.step, dtype=args.dtype, role=args.role)
        replace_folder(staging, out, command="export", run=str(run_dir), step=args.step)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"exported {run_dir} to {out}")
    return 0


# --------------------------------------------------------------------------- generate


def add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate responses for a file of prompts",
        description="Decode responses with the KV-cache sampler for every row of a prompts file "
                    "(JSONL/JSON/parquet rows with 'prompt' or 'messages'); writes JSONL with each "
                    "row's fields plus response, response_tokens and finished. Greedy by default.")
    p.add_argument("model", metavar="MODEL_DIR", help="Hugging Face folder with a tokenizer")
    p.add_argument("--prompts", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL to write")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default="data=-1,fsdp=1,tensor=1")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--strict", action="store_true",
                   help="accepted for old scripts; generate always stops at the first row it cannot render")
    p.add_argument("--overwrite", action="store_true",
                   help="write --out even if it is an input of this command or lies in the model folder")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from jaxrlhf.config import ConfigError
    from jaxrlhf.generate import SamplingConfig
    from jaxrlhf.paths import check_output
    from jaxrlhf.stages.sample import generate_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_prompt_length < 1:
        raise ConfigError(f"--max-prompt-length must be >= 1, got {args.max_prompt_length}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    check_output(args.out, inputs=(args.prompts,), input_model_dirs=(args.model,), overwrite=args.overwrite)
    try:
        config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    mesh = _mesh_from_flag(args.mesh)
    if args.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ConfigError(f"--batch-size {args.batch_size} must be a multiple of data x fsdp "
                          f"= {mesh.shape['data'] * mesh.shape['fsdp']}")
    stats = generate_file(args.model, args.prompts, args.out, config=config, batch_size=args.batch_size,
                          max_prompt_length=args.max_prompt_length, seed=args.seed, mesh=mesh,
                          dtype=args.dtype)
    print(f"wrote {stats['rows']} rows to {args.out}: {stats['generated_tokens']} tokens in "
          f"{stats['seconds']:.1f}s ({stats['generated_tokens'] / max(stats['seconds'], 1e-9):.0f} tokens/s)")
    return 0


# --------------------------------------------------------------------------- score


def add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="score (prompt, answer) rows with a reward model, as training and PPO do",
        description="Score every row of a file with a reward model folder, laid out as RM training and PPO "
                    "lay out sequences (the prompt with the tokenizer's special tokens, the answer, EOS when "
                    "the RM was trained with it, the reward read at the last token). Rows: 'prompt' (or "
                    "'messages' / a conversational prompt, rendered with the chat template) and the answer "
                    "as 'completion', 'response' or 'answer'. Writes JSONL with each row's fields plus "
                    "'reward' (normalised: gain * raw + bias, what PPO pays) and 'raw_reward'.",
        epilog="example: jaxrlhf score runs/rm/final --data answers.jsonl --out scored.jsonl")
    p.add_argument("model", metavar="MODEL_DIR", help="reward model folder (jaxrlhf rm's final/ or an export)")
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL/JSON/parquet rows to score")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL to write")
    p.add_argument("--append-eos", choices=["auto", "true", "false"], default="auto",
                   help="end each answer with EOS (auto: as the reward model was trained, else true)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true",
                   help="write --out even if it is an input of this command or lies in the model folder")
    p.set_defaults(run=run_score)


def run_score(args) -> int:
    from jaxrlhf.config import ConfigError
    from jaxrlhf.paths import check_output
    from jaxrlhf.scoring import score_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output(args.out, inputs=(args.data,), input_model_dirs=(args.model,), overwrite=args.overwrite)
    append_eos = {"auto": None, "true": True, "false": False}[args.append_eos]
    stats = score_file(args.model, args.data, args.out, append_eos=append_eos, batch_size=args.batch_size,
                       dtype=args.dtype)
    print(f"scored {stats['rows']} rows to {args.out} (mean reward {stats['mean_reward']:.4g})")
    return 0


# --------------------------------------------------------------------------- plan


def add_plan(sub) -> None:
    p = sub.add_parser(
        "plan", help="per-device memory of the RM step and PPO iteration, compiled ahead of time",
        description="Compile the reward-model step and the PPO iteration (actor, critic, reference "
                    "and reward model resident) for an architecture on N fake CPU devices, with "
                    "abstract arrays only, and print per-device memory from the compiled programs "
                    "next to the memory of common chips.",
        epilog="example: jaxrlhf plan --config configs/models/llama3-8b.yaml --mesh fsdp=64 --devices 64")
    p.add_argument("--config", required=True, metavar="FILE", help="architecture YAML or HF config.json")
    p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1")
    p.add_argument("--devices", type=int, required=True, help="number of (fake) devices")
    p.add_argument("--stage", choices=["rm", "ppo", "all"], default="all")
    p.add_argument("--batch", type=int, default=0, help="prompts per step (default: one per device)")
    p.add_argument("--k", type=int, default=2, help="answers per prompt (RM)")
    p.add_argument("--seq", type=int, default=1024, help="tokens per RM sequence")
    p.add_argument("--prompt", type=int, default=512, help="PPO prompt tokens")
    p.add_argument("--new-tokens", type=int, default=512, help="PPO response tokens")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--no-remat", action="store_true", help="keep activations (no per-block remat)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also plan the PPO iteration with LoRA adapters of this rank (0: full fine-tuning only)")
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated q,k,v,o,gate,up,down or all-linear")
    p.add_argument("--lora-base-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="storage dtype of the frozen base in the LoRA plan")
    p.set_defaults(run=run_plan)


def run_plan(args) -> int:
    import json as json_

    from jaxrlhf.config import read_yaml
    from jaxrlhf.models import config_from_hf
    from jaxrlhf.plan import format_plan, plan_ppo_iteration, plan_rm_step

    path = Path(args.config)
    hf = json_.loads(path.read_text()) if path.suffix == ".json" else read_yaml(path)
    arch = config_from_hf(hf, strict=path.suffix != ".json", source=str(path))
    mesh = _mesh_from_flag(args.mesh)
    batch = args.batch or mesh.shape["data"] * mesh.shape["fsdp"]
    common = dict(dtype=args.dtype, remat=not args.no_remat)
    print(f"{arch.model_type}: {arch.num_hidden_layers} layers, hidden {arch.hidden_size}, vocab "
          f"{arch.vocab_size}; mesh {dict(mesh.shape)}; {args.dtype} compute, float32 params + Adam")
    plans = []
    if args.stage in ("rm", "all"):
        plans.append(plan_rm_step(arch, mesh, batch=batch, k=args.k, seq=args.seq, **common))
    if args.stage in ("ppo", "all"):
        plans.append(plan_ppo_iteration(arch, mesh, batch=batch, prompt=args.prompt,
                                        new_tokens=args.new_tokens, **common))
        if args.lora_rank:  # the same iteration with adapters on frozen bases, beside full fine-tuning
            from jaxrlhf.config import ConfigError, LoRAConfig
            try:
                lora = LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                                  targets=tuple(args.lora_targets.split(",")))
            except ValueError as e:
                raise ConfigError(f"--lora-rank/--lora-targets: {e}") from None
            print(f"LoRA: rank {lora.rank} on {', '.join(lora.target_names())}; {args.lora_base_dtype} "
                  "frozen bases, float32 adapters + Adam")
            plans.append(plan_ppo_iteration(arch, mesh, batch=batch, prompt=args.prompt, new_tokens=args.new_tokens,
                                            param_dtype=args.lora_base_dtype, lora=lora, **common))
    print(format_plan(plans))
    return 0


# --------------------------------------------------------------------------- convert


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint of another format to a safetensors folder",
                       description="Convert a checkpoint of another format into a Hugging Face safetensors "
                                   "folder the ports (and transformers) load.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    gguf = formats.add_parser(
        "gguf", help="a GGUF file, dequantised to float32 (needs: pip install 'jaxrlhf[real,test]')",
        description="Read a GGUF file with transformers (dequantised to float32) and save it as "
                    "config.json + model.safetensors (+ tokenizer) without the GGUF quantization_config.",
        epilog="example: jaxrlhf convert gguf gemma-3-270m-Q4_K_M.gguf runs/gemma3-270m")
    gguf.add_argument("file", metavar="FILE", help="the .gguf file")
    gguf.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    gguf.add_argument("--no-tokenizer", action="store_true", help="do not write the tokenizer")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from jaxrlhf.config import ConfigError
    from jaxrlhf.convert import ConversionError, convert_gguf

    try:
        folder = convert_gguf(args.file, args.out, tokenizer=not args.no_tokenizer)
    except ConversionError as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {folder}")
    return 0


# --------------------------------------------------------------------------- helpers


def _mesh_or_error(mesh_config, what: str):
    from jaxrlhf.config import ConfigError
    from jaxrlhf.sharding import make_mesh
    try:
        return make_mesh(mesh_config)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


def _mesh_from_flag(text: str):
    """The mesh a --mesh flag (data=..,fsdp=..,tensor=..) describes; bad values are user errors."""
    from jaxrlhf.config import ConfigError
    from jaxrlhf.sharding import MeshConfig
    try:
        mesh_config = MeshConfig.parse(text)
    except ValueError as e:
        raise ConfigError(f"--mesh: {e}") from None
    return _mesh_or_error(mesh_config, "--mesh")


def _param_count(model) -> int:
    from flax import nnx
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n}"


# --------------------------------------------------------------------------- config


def add_config(sub) -> None:
    p = sub.add_parser("config", help="show a stage's config keys, defaults and descriptions",
                       description="Print every key a stage's YAML config takes (dotted, as --set takes "
                                   "it), its default and a one-line description, read from the config "
                                   "dataclasses and their field comments.",
                       epilog="example: jaxrlhf config show sft")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print every key of STAGE's config with its default")
    show.add_argument("stage", metavar="STAGE", choices=list(STAGES), help=" | ".join(STAGES))
    p.set_defaults(run=run_config)


def run_config(args) -> int:
    import importlib

    from jaxrlhf.config_doc import config_keys, format_keys, with_preset

    info = STAGES[args.stage]
    module_name, config_name = info[:2]
    rows = config_keys(getattr(importlib.import_module(module_name), config_name))
    if hasattr(info, "defaults"):  # a preset stage (grpo, rloo...): its defaults, not the dataclass's
        rows = with_preset(rows, info.defaults())
    print(format_keys(rows, f"# jaxrlhf {args.stage} --config FILE: every key (--set KEY=VALUE), "
                            f"its default and what it does ({module_name}.{config_name})"))
    return 0


COMMANDS = (*(_stage_adder(name) for name in STAGES), add_generate, add_score, add_export, add_plan, add_init_model,
            add_inspect, add_config, add_convert)


def task_commands():
    """The subcommand adders of installed tasks: the ``jaxrlhf.tasks`` entry-point group (each entry
    a module with ``COMMANDS``, a tuple of ``add(subparsers)`` functions). The library never imports
    a task itself; a task plugs in here."""
    from importlib.metadata import entry_points

    adders = []
    for entry in sorted(entry_points(group="jaxrlhf.tasks"), key=lambda e: e.name):
        adders.extend(entry.load().COMMANDS)
    return adders


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrlhf", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jaxrlhf {__version__}")
    parser.add_argument("--cpu-devices", type=int, metavar="N",
                        help="on CPU, split the host into N fake devices (to try a mesh)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="multi-host: address of process 0 (jax.distributed); with "
                             "--num-processes and --process-id")
    parser.add_argument("--num-processes", type=int, metavar="N")
    parser.add_argument("--process-id", type=int, metavar="I")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host with JAX's own detection (TPU pods, Slurm)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (*COMMANDS, *task_commands()):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxrlhf.hostmem import tune_host_malloc
    tune_host_malloc()  # before any thread allocates: ~20% off CPU step times (jaxrlhf/hostmem.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("jax", "absl", "orbax"):  # backend probing and checkpoint-manager chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "plan":  # compile for N fake CPU devices, whatever hardware is here
        import jax
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.devices)
    elif args.cpu_devices is not None:
        if args.cpu_devices < 1:
            print(f"jaxrlhf: error: --cpu-devices must be >= 1, got {args.cpu_devices}", file=sys.stderr)
            return 2
        import jax
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from jaxrlhf.distributed import initialize
    try:
        initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    except ValueError as e:
        print(f"jaxrlhf: error: {e}", file=sys.stderr)
        return 2

    from jaxrlhf.config import ConfigError
    from jaxrlhf.data import DataError
    from jaxrlhf.loop import NonFiniteLossError
    from jaxrlhf.models import CheckpointError
    try:
        return args.run(args)
    except (ConfigError, CheckpointError, DataError, NonFiniteLossError) as e:
        print(f"jaxrlhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxrlhf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
