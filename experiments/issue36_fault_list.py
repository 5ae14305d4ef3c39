"""Issue 36's bad inputs and faults, each tried once through the CLI (or the data loader for
single rows), printing how each ends: exit status, the one line on stderr, warnings, skip reasons.

Everything runs in this one process (jaxrlhf.cli.main in-process, 8 CPU devices as in the
tests) on the tests' tiny model and ranked data. The kill -9 trials are
experiments/kill_resume_trials.py. Results go to experiments/NOTES.md ("Issue 36 fault list").

Run: nice -n 19 python experiments/issue36_fault_list.py --work /tmp/issue36-faults > faults.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny model and data fixtures

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from jaxrlhf.cli import main as cli  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (case, input or fault, how it ended)


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run(case: str, what: str, argv: list[str], *, check=None) -> int:
    """cli(argv); records exit status, the last stderr line and any warning; ``check()`` may add
    a fact about the files afterwards."""
    err, warnings = io.StringIO(), Warnings()
    logging.getLogger().addHandler(warnings)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli(argv)
            except SystemExit as e:  # argparse
                code = e.code
            except Exception as e:  # a traceback: recorded as such
                code = f"traceback {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        logging.getLogger().removeHandler(warnings)
    lines = [line for line in err.getvalue().splitlines() if line.strip() and "it/s]" not in line
             and "%|" not in line and " INFO " not in line]
    ended = f"exit {code}"
    errors = [line for line in lines if "error" in line.lower()]
    if errors:
        ended += f", {len(errors)} error line{'s' if len(errors) > 1 else ''}: `{errors[-1].strip()}`"
    for w in warnings.lines:
        if "damaged" in w or "resume" in w.lower():
            ended += f"; warning: `{w}`"
    if check is not None:
        ended += f"; {check()}"
    ROWS.append((case, what, ended))
    return code


def setup(work: Path):
    from rm_fixtures import copy_rows, ranked_rows, rm_config_yaml, tiny_model_folder, write_jsonl

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = tiny_model_folder(work / "model")
    train = write_jsonl(ranked_rows(40, k=3, seed=0), work / "train.jsonl")
    other = write_jsonl(ranked_rows(40, k=3, seed=1), work / "other.jsonl")
    prompts = write_jsonl([{"prompt": r["prompt"], "limit": 5} for r in copy_rows(4)], work / "prompts.jsonl")
    cfg = rm_config_yaml(work, model, train)
    return model, train, other, prompts, cfg


def twice(run_dir: Path) -> str:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = [(r["split"], r["step"]) for r in rows]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    return f"metrics.jsonl rows logged twice: {repeated or 'none'}"


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def resume_cases(cfg: str, other: Path, run_dir: Path):
    base = ["rm", "--config", cfg, "--set", "train.save_every=2"]  # 1 epoch: 4 steps
    run("1 resume", "first run (1 epoch = 4 steps, save_every 2)", base)
    first = (run_dir / "config.yaml").read_text()
    kept = lambda: "config.yaml " + ("kept" if (run_dir / "config.yaml").read_text() == first else "REWRITTEN")
    for what, sets in [("--resume --set train.batch_size=16", ["train.batch_size=16"]),
                       ("--resume --set train.batch_size=32", ["train.batch_size=32"]),
                       ("--resume --set seed=1", ["seed=1"]),
                       ("--resume --set data.max_length=32", ["data.max_length=32"]),
                       ("--resume with another train file", [f"data.train_files=[{other}]"]),
                       ("--resume --set mesh.data=2", ["mesh.data=2"])]:
        argv = list(base)
        for s in sets:
            argv += ["--set", s]
        run("1 resume", what, argv + ["--resume"], check=kept)
    safe = base + ["--set", "train.epochs=2", "--set", "train.log_every=1", "--resume"]
    run("1 resume", "--resume --set train.epochs=2 --set train.log_every=1 (safe changes)", safe,
        check=lambda: (f"{kept()}; written: {sorted(p.name for p in run_dir.glob('config.resume-*.yaml'))}; "
                       f"run_record resumes: {len(json.loads((run_dir / 'run_record.json').read_text())['resumes'])}; "
                       f"checkpoints {steps(run_dir)}; {twice(run_dir)}"))
    run("6 metrics", "the same --resume again (the run is finished: its last checkpoint is the final one)", safe,
        check=lambda: twice(run_dir))


def checkpoint_cases(cfg: str, run_dir: Path, work: Path):
    from test_checkpoint_fallback import FAULTS

    latest = steps(run_dir)[-1]
    for fault, damage in FAULTS.items():
        copy = work / f"damaged-{fault.replace(' ', '-').replace('/', '')}"
        shutil.copytree(run_dir, copy)
        damage(copy / "checkpoints" / str(latest))
        run("2 damaged checkpoint", f"export; latest step {latest}: {fault}",
            ["export", str(copy), "--out", str(work / f"exported-{copy.name}")],
            check=lambda c=copy: f"set aside: {sorted(p.name for p in (c / 'checkpoints' / 'damaged').iterdir())}")
    copy = work / "damaged-resume"
    shutil.copytree(run_dir, copy)
    FAULTS["truncated data file"](copy / "checkpoints" / str(latest))
    run("2 damaged checkpoint", f"--resume --set train.epochs=3; latest step {latest}: truncated data file",
        ["rm", "--config", cfg, "--set", f"output_dir={copy}", "--set", "train.epochs=3",
         "--set", "train.save_every=2", "--set", "train.log_every=1", "--resume"],
        check=lambda: f"checkpoints now {steps(copy)}, damaged/: "
                      f"{sorted(p.name for p in (copy / 'checkpoints' / 'damaged').iterdir())}; {twice(copy)}")
    copy = work / "damaged-all"
    shutil.copytree(run_dir, copy)
    for step in steps(copy):
        FAULTS["empty manifest.ocdbt"](copy / "checkpoints" / str(step))
    run("2 damaged checkpoint", "export with every step damaged (empty manifest.ocdbt)",
        ["export", str(copy), "--out", str(work / f"exported-{copy.name}")])


def output_cases(model: Path, prompts: Path, run_dir: Path, work: Path):
    before = prompts.read_bytes()
    same = lambda p, b: "input " + ("unchanged" if p.read_bytes() == b else "CHANGED")
    run("3 inputs", "generate M --prompts P --out P",
        ["generate", str(model), "--prompts", str(prompts), "--out", str(prompts)], check=lambda: same(prompts, before))
    cfg_bytes = (model / "config.json").read_bytes()
    run("3 inputs", "generate M --prompts P --out M/config.json",
        ["generate", str(model), "--prompts", str(prompts), "--out", str(model / "config.json")],
        check=lambda: same(model / "config.json", cfg_bytes))
    run("3 inputs", "eval length-control --data D --out D",
        ["eval", "length-control", "--model", str(model), "--data", str(prompts), "--out", str(prompts)],
        check=lambda: same(prompts, before))
    files = {p.name: p.read_bytes() for p in model.iterdir()}
    run("3 inputs", "export RUN --out BASE_MODEL_FOLDER (the run's model.path)",
        ["export", str(run_dir), "--out", str(model)],
        check=lambda: "model folder " + ("unchanged" if {p.name: p.read_bytes() for p in model.iterdir()} == files
                                         else "CHANGED"))
    foreign = work / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    run("3 inputs", "export RUN --out NON_EMPTY_FOLDER_NOT_WRITTEN_BY_JAXRLHF",
        ["export", str(run_dir), "--out", str(foreign)])
    run("3 inputs", "the same with --overwrite", ["export", str(run_dir), "--out", str(foreign), "--overwrite"],
        check=lambda: f"notes.txt {'kept' if (foreign / 'notes.txt').exists() else 'gone'}")


def config_cases(cfg: str, model: Path, prompts: Path, work: Path):
    blocker = work / "a-file"
    blocker.write_text("x")
    for sets in (["mesh.data=3"], ["mesh.data=3", "mesh.fsdp=3"], [f"output_dir={blocker}"],
                 [f"output_dir={blocker / 'run'}"], ["data.num_slots=2"], ["data.num_slots=1"],
                 ["data.min_prompt_tokens=24"], ["train.log_every=0"], ["seed=-1"], ["train.keep_checkpoints=-1"],
                 ["train.keep_checkpoints=0"], ["train.micro_batch_size=-2"], ["train.eval_batch_size=-1"],
                 ["train.optim.max_grad_norm=-1"], ["train.optim.b1=1.5"], ["train.optim.weight_decay=-1"],
                 ["train.max_steps=-5"], ["train.optim.learning_rate=.nan"]):
        out = work / "cfg-run"
        argv = ["rm", "--config", cfg, "--set", f"output_dir={out}"]
        for s in sets:
            argv += ["--set", s]
        run("4 config", "rm --set " + " --set ".join(sets), argv,
            check=lambda: "run folder " + ("written" if out.exists() else "not written"))
        shutil.rmtree(out, ignore_errors=True)
    for stage in ("sft", "dpo", "ppo"):
        stage_cfg = work / f"{stage}.yaml"
        if stage == "ppo":
            stage_cfg.write_text(f"model: {{path: {model}}}\ndata: {{prompt_files: [{prompts}]}}\n"
                                 "rewards:\n  - {kind: rule, function: \"jaxrlhf.rewards:target_length_tokens\"}\n")
        else:
            stage_cfg.write_text(f"model: {{path: {model}}}\ndata: {{train_files: [{work / 'train.jsonl'}]}}\n")
        out = work / f"cfg-{stage}"
        run("4 config", f"{stage} --set mesh.data=3", [stage, "--config", str(stage_cfg), "--set", f"output_dir={out}",
                                                       "--set", "mesh.data=3"],
            check=lambda: "run folder " + ("written" if out.exists() else "not written"))
    run("4 config", "generate --batch-size 0", ["generate", str(model), "--prompts", str(prompts), "--out",
                                                 str(work / "gen.jsonl"), "--batch-size", "0"])
    run("4 config", "--cpu-devices 0", ["--cpu-devices", "0", "config", "show", "sft"])


def data_cases(work: Path):
    from test_data_row_faults import FAULTS, GOOD
    from jaxrlhf.data import DataError, load_preference_data

    names = ["deeply nested JSON line", "integer of 5001 digits", "lone surrogate \\ud800",
             "duplicate JSON key", "chosen equals rejected", "one answer given two scores",
             "pair and ranked fields in one row", "score past float range (400 digits)"]
    for name, (line, _, _) in zip(names, FAULTS):
        path = work / "row.jsonl"
        path.write_text(GOOD + "\n" + line + "\n", encoding="utf-8")
        kept, report = load_preference_data(str(path))
        try:
            load_preference_data(str(path), strict=True)
            strict = "strict: accepted"
        except DataError as e:
            strict = f"strict: `{str(e).replace(str(path), 'FILE')}`"
        ROWS.append(("5 data row", name, f"lenient: kept {len(kept)} of 2, skipped {dict(report.skipped)}; {strict}"))


def shard_case(work: Path):
    from hf_models import build_hf_model, tiny_llama_config
    from safetensors.numpy import load_file

    model = work / "escaping-model"
    build_hf_model(tiny_llama_config(), model)
    other = work / "other"
    other.mkdir()
    (model / "model.safetensors").rename(other / "model.safetensors")
    keys = load_file(other / "model.safetensors").keys()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "../other/model.safetensors" for k in keys}}))
    run("6 shard index", "weight_map -> ../other/model.safetensors (jaxrlhf inspect)", ["inspect", str(model)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/issue36-faults"))
    args = parser.parse_args(argv)
    model, train, other, prompts, cfg = setup(args.work)
    run_dir = args.work / "run"
    sections = [lambda: resume_cases(cfg, other, run_dir), lambda: checkpoint_cases(cfg, run_dir, args.work),
                lambda: output_cases(model, prompts, run_dir, args.work),
                lambda: config_cases(cfg, model, prompts, args.work), lambda: data_cases(args.work),
                lambda: shard_case(args.work)]
    for section in sections:
        try:
            section()
        except Exception as e:  # the script's own failure: shown as a row, the other sections still run
            ROWS.append(("script", "section failed", f"{type(e).__name__}: {e}"))
    print("| case | input or fault | how it ends |\n|---|---|---|")
    for case, what, ended in ROWS:
        print(f"| {case} | {what} | {ended.replace('|', '¦').replace(str(args.work), 'W')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
