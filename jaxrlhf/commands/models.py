"""The model-facing commands: init-model, inspect, export, generate, score, plan and convert.
Each ``add_<name>(subparsers)`` sits next to the ``run_<name>(args)`` it sets as the parser's ``run``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jaxrlhf.commands.common import add_config_args, fmt_bytes, mesh_from_flag, mesh_or_error, param_count

log = logging.getLogger("jaxrlhf")


# --------------------------------------------------------------------------- init-model


def add_init_model(sub) -> None:
    p = sub.add_parser(
        "init-model", help="create a random model from an architecture and save it",
        description="Create a randomly initialised model directly in its sharded layout on the "
                    "mesh and save it as a Hugging Face folder that transformers loads.",
        epilog="example: jaxrlhf init-model --config configs/init/llama-tiny.yaml "
               "--set output_dir=runs/my-model")
    add_config_args(p)
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
    mesh = mesh_or_error(cfg.mesh, "mesh")
    log.info("mesh %s over %d %s device(s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
    start = time.perf_counter()
    model = create_model(arch, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                         remat=cfg.model.remat, mesh=mesh, seed=cfg.seed)
    out = save_pretrained(model, cfg.output_dir, tokenizer=tokenizer)
    save_config(cfg, Path(out) / "jaxrlhf_config.yaml")
    n = param_count(model)
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

    mesh = mesh_from_flag(args.mesh)
    model = from_pretrained(args.model, dtype=args.dtype, mesh=mesh, progress=True)
    c = model.config
    print(f"model      {args.model}: {c.model_type}, {c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}")
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    total = sum(v.get_value().nbytes for _, v in params)
    per_device = sum(per_device_bytes(v.get_value()) for _, v in params)
    print(f"parameters {param_count(model):,} ({fmt_bytes(total)})")
    print(f"mesh       {dict(mesh.shape)} on {mesh.size} {jax.devices()[0].platform} device(s)")
    print(f"per device {fmt_bytes(per_device)} of parameters ({total / max(per_device, 1):.1f}x less "
          "than unsharded)")
    print("largest tensors:")
    largest = sorted(params, key=lambda pv: -pv[1].get_value().nbytes)[:6]
    for path, v in largest:
        a = v.get_value()
        print(f"  {'.'.join(map(str, path)):<40} {str(list(a.shape)):<16} "
              f"{str(a.sharding.spec):<28} {fmt_bytes(per_device_bytes(a))}/device")

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
    mesh = mesh_from_flag(args.mesh)
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
    p.add_argument("--logits", choices=["full", "chunked"], default="full",
                   help="model.logits for the PPO log-probs: full [B, T, V] logits, or the head in token chunks")
    p.add_argument("--logits-chunk-size", type=int, default=512, help="model.logits_chunk_size (tokens per chunk)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also plan the PPO iteration with LoRA adapters of this rank (0: full fine-tuning only)")
    p.add_argument("--lora-targets", default="all-linear", help="comma-separated q,k,v,o,gate,up,down or all-linear")
    p.add_argument("--lora-base-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="storage dtype of the frozen base in the LoRA plan")
    p.set_defaults(run=run_plan)


def run_plan(args) -> int:
    import json as json_

    from jaxrlhf.config import ConfigError, read_yaml
    from jaxrlhf.models import config_from_hf
    from jaxrlhf.plan import fit_hint, format_plan, plan_ppo_iteration, plan_rm_step

    path = Path(args.config)
    hf = json_.loads(path.read_text()) if path.suffix == ".json" else read_yaml(path)
    arch = config_from_hf(hf, strict=path.suffix != ".json", source=str(path))
    mesh = mesh_from_flag(args.mesh)
    batch = args.batch or mesh.shape["data"] * mesh.shape["fsdp"]
    common = dict(dtype=args.dtype, remat=not args.no_remat)
    if args.logits_chunk_size < 1:
        raise ConfigError(f"--logits-chunk-size must be >= 1, got {args.logits_chunk_size}")
    logits = (args.logits, args.logits_chunk_size)
    print(f"{arch.model_type}: {arch.num_hidden_layers} layers, hidden {arch.hidden_size}, vocab "
          f"{arch.vocab_size}; mesh {dict(mesh.shape)}; {args.dtype} compute, float32 params + Adam; "
          f"logits {args.logits}" + (f" ({args.logits_chunk_size}-token chunks)" if args.logits == "chunked" else ""))
    plans = []
    if args.stage in ("rm", "all"):
        plans.append(plan_rm_step(arch, mesh, batch=batch, k=args.k, seq=args.seq, **common))
    if args.stage in ("ppo", "all"):
        plans.append(plan_ppo_iteration(arch, mesh, batch=batch, prompt=args.prompt,
                                        new_tokens=args.new_tokens, logits=logits, **common))
        if args.lora_rank:  # the same iteration with adapters on frozen bases, beside full fine-tuning
            from jaxrlhf.config import LoRAConfig
            try:
                lora = LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                                  targets=tuple(args.lora_targets.split(",")))
            except ValueError as e:
                raise ConfigError(f"--lora-rank/--lora-targets: {e}") from None
            print(f"LoRA: rank {lora.rank} on {', '.join(lora.target_names())}; {args.lora_base_dtype} "
                  "frozen bases, float32 adapters + Adam")
            plans.append(plan_ppo_iteration(arch, mesh, batch=batch, prompt=args.prompt, new_tokens=args.new_tokens,
                                            param_dtype=args.lora_base_dtype, lora=lora, logits=logits,
                                            **common))
    print(format_plan(plans))
    hint = fit_hint(plans, logits=args.logits, mesh_shape=dict(mesh.shape))
    if hint:
        print(hint)
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
