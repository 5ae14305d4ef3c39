"""The length-control task's commands (``jaxrlhf demo``, ``jaxrlhf data length-control``, ``jaxrlhf
eval length-control``), plugged into the CLI through the ``jaxrlhf.tasks`` entry point (COMMANDS)."""

from __future__ import annotations


def _add_config_args(p) -> None:
    from jaxrlhf.cli import _add_config_args as add
    add(p)


# --------------------------------------------------------------------------- length-control task

SIZES = {
    # a few-minute smoke run of the whole pipeline (the numbers mean little at this size)
    "smoke": ["data.n_sft=120", "data.n_rm=60", "data.n_test=16", "data.n_test_held_out=8", "data.n_ppo_prompts=64",
              "sft.train.epochs=1", "rm.train.epochs=1", "ppo.train.iterations=2",
              "data.n_rm_policy=16", "ppo.train.batch_size=16", "ppo.rollout.max_new_tokens=24", "dpo.train.epochs=1",
              "max_length=192", "max_prompt_length=160"],
    "default": [],
}


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="the length-control RLHF experiment end to end (no arguments needed)",
        description="Build the length-controlled summarisation data, train a tiny Llama from scratch "
                    "(SFT), a reward model on ranked answers, PPO against that reward model and DPO, "
                    "evaluate SFT, DPO and PPO on the test split and write report.md. Stages that "
                    "finished are skipped on a re-run; interrupted ones resume.",
        epilog="example: jaxrlhf demo --out runs/length-control --set ppo.train.iterations=150")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/length-control)")
    p.add_argument("--source", nargs="+", metavar="FILE",
                   help="your own paragraphs: .txt (blank-line separated) or .jsonl with 'text'")
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="'smoke' runs every stage in a few minutes at a meaningless size")
    p.set_defaults(run=run_demo_command)


def run_demo_command(args) -> int:
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config, run_demo

    overrides = list(SIZES[args.size]) + list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.source:
        overrides.append("source=[" + ",".join(args.source) + "]")
    cfg = load_demo_config(args.config, overrides)
    result = run_demo(cfg)
    scores = ", ".join(f"{k.upper()} {v:.3f}" for k, v in result["scores"].items())
    print(f"demo finished in {result['seconds'] / 60:.1f} min: mean length score {scores}; "
          f"report: {result['report']}")
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="build task data sets",
                       description="Build the data of a task.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    lc = tasks.add_parser(
        "length-control", help="length-controlled summarisation data",
        description="Write sft.jsonl, rm.jsonl (4 faithful drafts per prompt ranked by closeness to the "
                    "limit, and with the demo's settings an unfaithful one of the right length ranked last), "
                    "dpo.jsonl, ppo_prompts.jsonl and test.jsonl (in-distribution rows and rows from the "
                    "held-out real source) for the length-control task, deterministically from the seed, "
                    "from the embedded text (generated notices and real reviews) or --source files.")
    lc.add_argument("--out", required=True, metavar="DIR")
    lc.add_argument("--source", nargs="+", metavar="FILE")
    lc.add_argument("--seed", type=int, default=None, help="default: the demo's (demo.yaml)")
    for flag, key in (("--n-sft", "n_sft"), ("--n-rm", "n_rm"), ("--n-test", "n_test"),
                      ("--n-ppo-prompts", "n_ppo_prompts")):
        lc.add_argument(flag, type=int, default=None, help=f"default: the demo's data.{key}")
    lc.add_argument("--n-rm-policy", type=int, default=None, metavar="N",
                    help="also write rm_policy_prompts.jsonl: N more RM prompts for the SFT model to "
                         "answer (the demo ranks its answers into further RM rows); default: the demo's")
    lc.add_argument("--paragraph-chars", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="length range of the embedded paragraphs (default: the demo's)")
    lc.add_argument("--sft-noise", type=float, default=None, metavar="STD",
                    help="spread of the SFT answers' relative length error (default: the demo's)")
    lc.set_defaults(run=run_data_length_control)


def run_data_length_control(args) -> int:
    """Exactly the demo's data unless a flag says otherwise (defaults from demo.yaml)."""
    from jaxrlhf.tasks.length_control import build_length_control_data
    from jaxrlhf.tasks.length_control.pipeline import load_demo_config

    demo = load_demo_config()
    d = demo.data
    pick = lambda value, default: default if value is None else value
    files = build_length_control_data(
        args.out, seed=pick(args.seed, demo.seed), source=args.source, n_sft=pick(args.n_sft, d.n_sft),
        n_rm=pick(args.n_rm, d.n_rm), n_test=pick(args.n_test, d.n_test),
        n_ppo_prompts=pick(args.n_ppo_prompts, d.n_ppo_prompts), n_rm_policy=pick(args.n_rm_policy, d.n_rm_policy),
        paragraph_chars=tuple(pick(args.paragraph_chars, d.paragraph_chars)), sft_noise=pick(args.sft_noise, d.sft_noise),
        real_share=d.real_share, n_test_held_out=d.n_test_held_out, rm_unfaithful=d.rm_unfaithful,
        dpo_unfaithful_share=d.dpo_unfaithful_share)
    for name, path in sorted(files.items()):
        print(f"{name:<12} {path}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a task", description="Evaluate a model on a task.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    lc = tasks.add_parser(
        "length-control", help="mean length score of greedy answers",
        description="Decode every prompt greedily, count the answer's characters (whitespace "
                    "excluded) and score it against the prompt's limit (the 'limit' field, or parsed "
                    "from the prompt); write predictions and print the mean score, the mean "
                    "fidelity (share of the answer's character bigrams found in its source paragraph: "
                    "the row's 'source', else its prompt) and the distribution over the six score "
                    "levels, per 'part' too when the rows name parts.")
    lc.add_argument("--model", required=True, metavar="DIR")
    lc.add_argument("--data", required=True, metavar="FILE", help='JSONL of {"prompt"[, "limit"]}')
    lc.add_argument("--out", required=True, metavar="FILE", help="predictions JSONL to write")
    lc.add_argument("--batch-size", type=int, default=32)
    lc.add_argument("--max-prompt-length", type=int, default=384)
    lc.add_argument("--overwrite", action="store_true",
                    help="write --out even if it is the --data file or lies in the model folder")
    lc.set_defaults(run=run_eval_length_control)


def run_eval_length_control(args) -> int:
    from jaxrlhf.config import ConfigError
    from jaxrlhf.paths import check_output
    from jaxrlhf.tasks.length_control import evaluate_length_control, format_distribution

    for flag, value in (("--batch-size", args.batch_size), ("--max-prompt-length", args.max_prompt_length)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    check_output(args.out, inputs=(args.data,), input_model_dirs=(args.model,), overwrite=args.overwrite)
    result = evaluate_length_control(args.model, args.data, args.out, batch_size=args.batch_size,
                                     max_prompt_length=args.max_prompt_length)
    print(f"mean length score {result['mean_score']:.3f}, mean fidelity {result['mean_fidelity']:.3f} over "
          f"{result['scored_rows']} rows ({result['no_limit_rows']} without a limit); predictions: {args.out}")
    print(format_distribution(result))
    return 0


COMMANDS = (add_demo, add_data, add_eval)
