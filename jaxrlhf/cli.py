"""The ``jaxrlhf`` command line: one entry point, one subcommand per job.

The subcommands live in jaxrlhf/commands/ (training stages and config show in training.py, the
model-facing commands in models.py), each a module-level pair ``add_<name>(subparsers)`` /
``run_<name>(args)`` that keeps the parser next to what it runs; installed tasks add theirs
through the ``jaxrlhf.tasks`` entry points. User errors (bad config, broken checkpoint) print one
line and exit with status 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jaxrlhf import __version__
from jaxrlhf.commands.common import add_config_args
from jaxrlhf.commands.models import (add_convert, add_export, add_generate, add_init_model, add_inspect,
                                     add_plan, add_score)
from jaxrlhf.commands.training import STAGES, add_config, stage_adder

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

# the name task plugins import to give their commands --config/--set (jaxrlhf/tasks/*/cli.py)
_add_config_args = add_config_args

COMMANDS = (*(stage_adder(name) for name in STAGES), add_generate, add_score, add_export, add_plan, add_init_model,
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
