"""The training-stage commands (sft, rm, dpo and the RL presets, one per entry of the stage
registry) and ``config show``, which prints a stage's config keys."""

from __future__ import annotations

import functools
from pathlib import Path

from jaxrlhf.commands.common import add_config_args
from jaxrlhf.stages.registry import STAGES  # name -> StageInfo; light: imports no stage


def stage_adder(name: str):
    info = STAGES[name]

    def add(sub) -> None:
        example = f"configs/{name}/example.yaml" if info.preset in (None, "ppo") else "configs/ppo/example.yaml"
        p = sub.add_parser(name, help=info.help, description=info.description,
                           epilog=f"example: jaxrlhf {name} --config {example}; every key: jaxrlhf config show {name}")
        add_config_args(p)
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


# --------------------------------------------------------------------------- config show


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
