"""Kill -9 at random moments, then --resume: does the run end exactly as an uninterrupted one?

For each stage (rm, ppo, sft, dpo by default) one uninterrupted reference run is made. Each
trial then starts the same run as a subprocess, SIGKILLs its process group at a moment drawn
from a seeded RNG, records what was on disk (complete checkpoint steps, Orbax temporary
folders of a save in progress, final/), resumes with ``--resume`` and compares with the
reference:

- every array of every safetensors file under final/ bit for bit (np.array_equal, same dtype);
- metrics.jsonl: no (split, step) row twice, the same rows as the reference, every value equal
  except wall-clock values (*_per_second, *_seconds);
- results.json's final eval, and config.yaml left as the first start wrote it.

Two kinds of kill moment alternate by trial:
- ``random``: a fraction f drawn uniformly in [-0.1, 1.05] of the reference run's training
  span (its wall time from the first checkpoint save to its exit) after this run's first save
  begins (f < 0: that much before it, during data loading or compilation; f near 1: while
  final/ is written). Measured from the first save, not from the start, so that the shared
  machine's load, which stretches startup and compilation, does not push every kill early;
- ``mid-save``: the n-th checkpoint save (n drawn) is awaited by polling for Orbax's
  ``<step>.orbax-checkpoint-tmp-*`` folder, then the kill follows after a drawn 0-20 ms.

Run (CPU, one device per process; results in experiments/NOTES.md):
    nice -n 19 python experiments/kill_resume_trials.py --trials 10 --seed 0 --work /tmp/kill-trials
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny model and data fixtures

TMP_MARK = ".orbax-checkpoint-tmp"
RULE = '{kind: rule, function: "jaxrlhf.rewards:target_length_tokens", kwargs: {target: 8}}'


# ---------------------------------------------------------------------------- setup

def make_inputs(work: Path) -> dict[str, Path]:
    """A tiny Llama folder with a char tokenizer and one data file per stage."""
    from rm_fixtures import copy_pairs, copy_rows, ranked_rows, tiny_model_folder, write_jsonl

    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    model = inputs / "model"
    if not (model / "config.json").exists():
        tiny_model_folder(model)
    files = {"ranked": lambda: ranked_rows(200, k=3, seed=3),
             "prompts": lambda: [{"prompt": r["prompt"]} for r in copy_rows(64)],
             "sft": lambda: copy_rows(240, seed=1), "pairs": lambda: copy_pairs(200, seed=2)}
    paths = {"model": model}
    for name, rows in files.items():
        paths[name] = inputs / f"{name}.jsonl"
        if not paths[name].exists():  # another trials process of this work folder may be reading it
            write_jsonl(rows(), paths[name])
    return paths


def stage_configs(work: Path, inputs: dict[str, Path]) -> dict[str, Path]:
    """One config per stage: a few dozen steps, a checkpoint every 2 steps (log_every divides
    save_every, so a resumed run's logging windows are the uninterrupted run's)."""
    m = inputs["model"]
    train = "log_every: 2\n  save_every: 2\n  eval_every: 10\n  optim: {learning_rate: 3.0e-3, warmup_steps: 2}"
    texts = {
        "rm": f"""seed: 0
model: {{path: {m}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{inputs['ranked']}], eval_fraction: 0.1, max_length: 24}}
train:
  epochs: 2
  batch_size: 8
  {train}
""",
        "sft": f"""seed: 0
model: {{path: {m}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{inputs['sft']}], eval_fraction: 0.1, max_length: 24}}
train:
  epochs: 2
  batch_size: 8
  {train}
""",
        "dpo": f"""seed: 0
model: {{path: {m}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{train_files: [{inputs['pairs']}], eval_fraction: 0.1, max_length: 24}}
train:
  epochs: 2
  batch_size: 8
  {train}
loss: {{beta: 0.5}}
""",
        "ppo": f"""seed: 0
model: {{path: {m}}}
mesh: {{data: 1, fsdp: 1, tensor: 1}}
data: {{prompt_files: [{inputs['prompts']}], max_prompt_length: 12}}
rollout: {{max_new_tokens: 16, temperature: 1.0}}
algorithm:
  kl: {{coef: 0.02}}
  epochs: 2
  minibatches: 2
train:
  iterations: 30
  batch_size: 8
  log_every: 2
  save_every: 2
  actor_optim: {{learning_rate: 3.0e-3, schedule: constant}}
  critic_optim: {{learning_rate: 3.0e-3, schedule: constant}}
rewards:
  - {RULE}
""",
    }
    paths = {}
    for stage, text in texts.items():
        paths[stage] = work / "inputs" / f"{stage}.yaml"
        paths[stage].write_text(text)
    return paths


def command(stage: str, config: Path, out: Path, *, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "jaxrlhf.cli", "--cpu-devices", "1", stage, "--config", str(config),
           "--set", f"output_dir={out}"]
    return cmd + (["--resume"] if resume else [])


def run_env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")


# ---------------------------------------------------------------------------- what is on disk

def on_disk(out: Path) -> dict:
    """Checkpoint steps complete and in progress, set-aside steps, final/, metrics rows."""
    ckpts = out / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
    complete = sorted(int(n) for n in names if n.isdigit())
    in_progress = []
    for n in names:
        if TMP_MARK in n:
            folder = ckpts / n
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            in_progress.append({"folder": n, "files": len(files),
                                "has_state_metadata": "state/_METADATA" in files,
                                "has_meta": "meta/metadata" in files})
    metrics = out / "metrics.jsonl"
    return {
        "run_folder": out.is_dir(),
        "config_yaml": (out / "config.yaml").is_file(),
        "run_record": (out / "run_record.json").is_file(),
        "complete_steps": complete,
        "in_progress": in_progress,
        "damaged": sorted(p.name for p in (ckpts / "damaged").iterdir()) if (ckpts / "damaged").is_dir() else [],
        "final": (out / "final").is_dir(),
        "metrics_rows": len(metrics.read_text().splitlines()) if metrics.is_file() else 0,
    }


def describe(disk: dict) -> str:
    if not disk["run_folder"]:
        return "no run folder yet"
    parts = []
    if disk["in_progress"]:
        parts.append("MID-SAVE: " + ", ".join(
            f"{p['folder'].split('.')[0]} in progress ({p['files']} files"
            f"{', no state/_METADATA' if not p['has_state_metadata'] else ''})" for p in disk["in_progress"]))
    parts.append(f"complete steps {disk['complete_steps'] or 'none'}")
    if disk["final"]:
        parts.append("final/ begun")
    if not disk["run_record"]:
        parts.append("no run_record.json")
    parts.append(f"{disk['metrics_rows']} metrics rows")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- comparisons

def final_arrays(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    arrays = {}
    for path in sorted((out / "final").rglob("*.safetensors")):
        rel = path.relative_to(out / "final")
        for key, value in load_file(path).items():
            arrays[f"{rel}:{key}"] = value
    return arrays


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def comparable(row: dict) -> dict:
    """A metrics row without its wall-clock values (rates and durations)."""
    return {k: v for k, v in row.items() if not k.endswith(("_per_second", "_seconds"))}


def compare(reference: Path, resumed: Path) -> list[str]:
    """Every difference between two finished run folders (empty: exact)."""
    problems = []
    ref, got = final_arrays(reference), final_arrays(resumed)
    if ref.keys() != got.keys():
        problems.append(f"final/ arrays differ in names: {sorted(ref.keys() ^ got.keys())[:5]}")
    for key in sorted(ref.keys() & got.keys()):
        if ref[key].dtype != got[key].dtype or not np.array_equal(ref[key], got[key]):
            diff = np.max(np.abs(ref[key].astype(np.float64) - got[key].astype(np.float64)))
            problems.append(f"{key} differs (max |diff| {diff:.3g})")
    rows = metric_rows(resumed)
    keys = [(r.get("split"), r.get("step")) for r in rows]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if twice:
        problems.append(f"metrics.jsonl logs {twice[:5]} more than once")
    ref_rows = {(r.get("split"), r.get("step")): comparable(r) for r in metric_rows(reference)}
    got_rows = {(r.get("split"), r.get("step")): comparable(r) for r in rows}
    if ref_rows.keys() != got_rows.keys():
        problems.append(f"metrics.jsonl rows differ: missing {sorted(ref_rows.keys() - got_rows.keys(), key=str)[:5]}"
                        f", extra {sorted(got_rows.keys() - ref_rows.keys(), key=str)[:5]}")
    changed = [k for k in ref_rows.keys() & got_rows.keys() if ref_rows[k] != got_rows[k]]
    if changed:
        problems.append(f"metrics.jsonl values differ at {sorted(changed, key=str)[:5]}")
    ref_eval = json.loads((reference / "results.json").read_text()).get("eval")
    got_eval = json.loads((resumed / "results.json").read_text()).get("eval")
    if ref_eval != got_eval:
        problems.append(f"results.json eval differs: {ref_eval} vs {got_eval}")
    return problems


# ---------------------------------------------------------------------------- one trial

def start(stage: str, config: Path, out: Path, log) -> subprocess.Popen:
    """The run in its own process group (the kill reaches every process it started)."""
    return subprocess.Popen(command(stage, config, out), env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def saves_begun(out: Path) -> set[str]:
    """Orbax temporary folders seen now (one per save in progress)."""
    try:
        return {n for n in os.listdir(out / "checkpoints") if TMP_MARK in n}
    except FileNotFoundError:
        return set()


def reference_run(stage: str, config: Path, work: Path) -> tuple[Path, float, float]:
    """(run folder, wall seconds, seconds until its first checkpoint save began)."""
    out = work / f"reference-{stage}"
    timing = out / "reference_timing.json"
    if (out / "final").is_dir() and timing.is_file():
        t = json.loads(timing.read_text())
        return out, t["wall_s"], t["first_save_s"]
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    first_save = None
    with open(work / f"reference-{stage}.log", "w") as log:
        proc = start(stage, config, out, log)
        while proc.poll() is None:
            if first_save is None and saves_begun(out):
                first_save = time.perf_counter() - started
            time.sleep(0.002)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or first_save is None:
        raise SystemExit(f"reference {stage} run failed (exit {proc.returncode}, first save seen: "
                         f"{first_save is not None}); see {work / f'reference-{stage}.log'}")
    timing.write_text(json.dumps({"wall_s": wall, "first_save_s": first_save}))
    return out, wall, first_save


def saves_of(reference: Path) -> int:
    """How many checkpoint saves the reference made before its last step."""
    last = max(r["step"] for r in metric_rows(reference))  # train rows ("ppo" in RL) and eval rows
    return last // 2 - 1  # save_every 2; the final save is at the last step


def kill_and_resume(trial: int, stage: str, mode: str, config: Path, work: Path,
                    reference: tuple[Path, float, float], seed: int) -> dict:
    ref_out, ref_wall, ref_first_save = reference
    rng = np.random.default_rng([seed, trial])  # trial i draws the same moment whichever trials run
    out = work / f"trial-{trial:02d}-{stage}"
    shutil.rmtree(out, ignore_errors=True)
    planned: dict = {"mode": mode}
    if mode == "random":
        planned["span_fraction"] = round(float(rng.uniform(-0.1, 1.05)), 3)
        offset = planned["span_fraction"] * (ref_wall - ref_first_save)
    else:
        planned["save_number"] = int(rng.integers(1, max(saves_of(ref_out), 1) + 1))
        planned["delay_ms"] = round(float(rng.uniform(0.0, 20.0)), 2)
    log = open(work / f"trial-{trial:02d}-{stage}.log", "w")
    started = time.perf_counter()
    proc = start(stage, config, out, log)
    seen_saves: set[str] = set()
    first_save = None
    killed = False
    while proc.poll() is None:
        now = time.perf_counter() - started
        seen_saves |= saves_begun(out)
        if seen_saves and first_save is None:
            first_save = now
        if mode == "random" and offset < 0:  # before the first save: counted from the start
            killed = now >= ref_first_save + offset
        elif mode == "random":
            killed = first_save is not None and now >= first_save + offset
        elif len(seen_saves) >= planned["save_number"]:
            time.sleep(planned["delay_ms"] / 1000)
            killed = True
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    kill_time = time.perf_counter() - started
    log.close()
    result = {"trial": trial, "stage": stage, **planned, "killed_at_s": round(kill_time, 3),
              "first_save_at_s": None if first_save is None else round(first_save, 3)}
    if not killed:
        result.update(outcome="not killed: the run finished first", exact=None)
        return result
    disk = on_disk(out)
    result["on_disk"] = disk
    result["on_disk_text"] = describe(disk)
    config_before = (out / "config.yaml").read_bytes() if (out / "config.yaml").is_file() else None
    with open(work / f"trial-{trial:02d}-{stage}-resume.log", "w") as rlog:
        resumed = subprocess.run(command(stage, config, out, resume=True), env=run_env(),
                                 stdout=rlog, stderr=subprocess.STDOUT)
    result["resume_exit"] = resumed.returncode
    if resumed.returncode != 0:
        tail = (work / f"trial-{trial:02d}-{stage}-resume.log").read_text()[-600:]
        result.update(outcome=f"resume failed (exit {resumed.returncode}): {tail.strip().splitlines()[-1:]}",
                      exact=False)
        return result
    problems = compare(ref_out, out)
    if config_before is not None and (out / "config.yaml").read_bytes() != config_before:
        problems.append("config.yaml was rewritten by the resume")
    result["after_resume"] = describe(on_disk(out))
    result["problems"] = problems
    result["exact"] = not problems
    result["outcome"] = "exact" if not problems else "; ".join(problems)
    return result


def recheck(work: Path, reports: list[Path]) -> int:
    failures = 0
    for report in reports:
        for line in report.read_text().splitlines():
            result = json.loads(line)
            if result.get("resume_exit") == 0:
                kept = [p for p in result["problems"] if p.startswith("config.yaml")]
                result["problems"] = compare(work / f"reference-{result['stage']}",
                                             work / f"trial-{result['trial']:02d}-{result['stage']}") + kept
                result["exact"] = not result["problems"]
                result["outcome"] = "exact" if result["exact"] else "; ".join(result["problems"])
            failures += result["exact"] is False
            print(json.dumps(result))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated trial numbers to run (default: all); "
                        "lets two processes share the trials of one work folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="rm,ppo,sft,dpo")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kill-resume-trials"))
    parser.add_argument("--report", type=Path, default=None, help="JSON lines of trial results (default WORK/trials.jsonl)")
    parser.add_argument("--recheck", type=Path, nargs="*", default=None,
                        help="compare the finished trial folders of these reports with the references again "
                             "(after a change to the comparison) and print the updated rows")
    args = parser.parse_args(argv)
    if args.recheck is not None:
        return recheck(args.work, args.recheck)
    stages = args.stages.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    configs = stage_configs(args.work, make_inputs(args.work))
    references = {}
    for stage in stages:
        references[stage] = reference_run(stage, configs[stage], args.work)
        print(f"reference {stage}: {references[stage][1]:.1f} s wall, first save began at "
              f"{references[stage][2]:.1f} s", flush=True)
    report = args.report or args.work / "trials.jsonl"
    chosen = [int(t) for t in args.only.split(",")] if args.only else list(range(args.trials))
    failures = 0
    with open(report, "w") as f:
        for trial in chosen:
            stage = stages[trial % len(stages)]
            mode = "mid-save" if (trial // len(stages)) % 2 == 1 else "random"
            result = kill_and_resume(trial, stage, mode, configs[stage], args.work, references[stage], args.seed)
            failures += result["exact"] is False
            f.write(json.dumps(result) + "\n")
            f.flush()
            when = f"kill at {result['killed_at_s']:.2f} s (first save at {result['first_save_at_s']} s; " + (
                f"save #{result['save_number']} + {result['delay_ms']} ms)" if mode == "mid-save"
                else f"span fraction {result['span_fraction']})")
            print(f"trial {trial} {stage} {mode}: {when}; on disk: {result.get('on_disk_text', '-')}; "
                  f"resume: {result['outcome']}", flush=True)
    print(f"{len(chosen) - failures}/{len(chosen)} trials without a difference; report {report}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
