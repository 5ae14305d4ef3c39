"""``jaxrlhf demo``: the length-controlled summarisation experiment end to end.

build data -> char tokenizer + tiny Llama from scratch -> SFT -> reward model (ranked
answers) -> PPO (from SFT, reward = the learned RM) -> DPO (from SFT) -> greedy eval of
SFT, DPO and PPO on the test split -> report.md with the seed-style table and curves.

With ``pretrained`` (a recipe such as configs/length_control/gemma3-270m-lora.yaml) SFT starts
from that Hugging Face folder instead, and its own tokenizer reads the prompts and answers as
plain text (``prompt + answer + EOS``, no chat template); ``every_stage`` gives all four stages
the same model settings (compute dtype, LoRA).

Every stage is the ordinary stage function with an ordinary config (written to its run
folder); a stage whose results.json exists is skipped, one with checkpoints is resumed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path

from jaxrlhf.config import from_dict, merge_dicts, save_config, to_dict
from jaxrlhf.sharding import MeshConfig
from jaxrlhf.tasks.length_control.corpus import embedded_text

log = logging.getLogger(__name__)
# answers sampled per call for the RM's policy rows: the decode loop runs to the longest answer,
# so wide batches amortise it (PPO's rollouts are 1024 wide)
POLICY_SAMPLE_BATCH = 512


DEMO_DEFAULTS = Path(__file__).with_name("demo.yaml")  # the demo's defaults: one file, no copies in code


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    n_sft: int
    n_rm: int
    n_test: int
    n_ppo_prompts: int
    # opt-in: more RM prompts, answered by the SFT model itself (rm_policy_answers samples each,
    # ranked by the rule) and added to the builder's n_rm rows
    n_rm_policy: int
    rm_policy_answers: int
    paragraph_chars: tuple[int, int]  # length range of the embedded paragraphs
    sft_noise: float  # std of the SFT answers' relative length error (their aim at the limit)
    real_share: float  # share of the embedded paragraphs taken from the real reviews
    n_test_held_out: int  # test rows from the held-out real source (no training file reads it)
    rm_unfaithful: int  # unfaithful drafts of the right length per RM row, ranked below the faithful
    dpo_unfaithful_share: float  # share of DPO pairs whose rejected answer is an unfaithful draft


@dataclasses.dataclass(frozen=True)
class DemoModelConfig:
    """The tiny Llama trained from scratch (keys as in transformers' config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rope_theta: float


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; every default lives in demo.yaml (load with :func:`load_demo_config`)."""

    data: DemoDataConfig
    model: DemoModelConfig
    output_dir: str
    seed: int
    max_length: int  # tokens per prompt+answer sequence (SFT, RM, DPO)
    max_prompt_length: int  # PPO / eval prompts (left-padded)
    source: tuple[str, ...] = ()  # your own paragraphs (.txt or .jsonl with "text"); default: embedded
    mesh: MeshConfig = MeshConfig(data=-1, fsdp=1, tensor=1)
    # per-stage settings, merged into the stage configs (any stage key may be given)
    sft: dict = dataclasses.field(default_factory=dict)
    rm: dict = dataclasses.field(default_factory=dict)
    ppo: dict = dataclasses.field(default_factory=dict)
    # how PPO uses the reward model: keys of its {kind: model} reward source other than path and
    # include_eos (which follow the RM stage)
    ppo_reward: dict = dataclasses.field(default_factory=dict)
    # a rule reward added to PPO's: {combine: none|length|fidelity|product|weighted_sum,
    # fidelity_weight, weight} (score:length_fidelity_reward; none: the learned RM alone)
    ppo_rule: dict = dataclasses.field(default_factory=dict)
    dpo: dict = dataclasses.field(default_factory=dict)
    # a pretrained Hugging Face folder (config.json + safetensors + its tokenizer) that SFT starts
    # from, instead of the tiny Llama (``model``) and char tokenizer built from scratch
    pretrained: str | None = None
    # settings merged into each of sft / rm / ppo / dpo before its own section, e.g.
    # {model: {dtype: bfloat16, lora: {rank: 16, ...}}}: one place for what every stage shares
    every_stage: dict = dataclasses.field(default_factory=dict)

    def __hash__(self):
        return hash(self.output_dir)


def load_demo_config(config_file=None, overrides=()) -> DemoConfig:
    """demo.yaml, refined by the user's YAML (key by key) and then by --set overrides."""
    from jaxrlhf.config import apply_overrides, read_yaml

    data = merge_dicts(read_yaml(DEMO_DEFAULTS), read_yaml(config_file) if config_file else {})
    source = (str(config_file) if config_file else str(DEMO_DEFAULTS)) + (" + --set" if overrides else "")
    return from_dict(DemoConfig, apply_overrides(data, list(overrides)), source)


def stage_configs(cfg: DemoConfig, out: Path, data: dict[str, Path]) -> dict:
    """The four stage configs of the demo, as the stage commands would load them."""
    from jaxrlhf.stages.dpo import DPOConfig
    from jaxrlhf.stages.rm import RMConfig
    from jaxrlhf.stages.sft import SFTConfig

    from jaxrlhf.stages.rl import RLConfig

    mesh = to_dict(cfg.mesh)
    base = base_model_dir(cfg, out)

    def settings(stage: dict) -> dict:
        return merge_dicts(cfg.every_stage, stage)

    sft = merge_dicts({"seed": cfg.seed, "output_dir": str(out / "sft"), "tokenizer": str(base),
                  "model": {"path": str(base)}, "mesh": mesh,
                  "data": {"train_files": [str(data["sft"])], "max_length": cfg.max_length}}, settings(cfg.sft))
    rm_files = [str(data["rm"])] + ([str(policy_rm_file(out))] if "rm_policy_prompts" in data else [])
    rm = from_dict(RMConfig, merge_dicts({"seed": cfg.seed, "output_dir": str(out / "rm"),
                                     "model": {"path": str(out / "sft" / "final")}, "mesh": mesh,
                                     "data": {"train_files": rm_files, "max_length": cfg.max_length}},
                                    settings(cfg.rm)), "demo rm")
    ppo = merge_dicts({"seed": cfg.seed, "output_dir": str(out / "ppo"), "model": {"path": str(out / "sft" / "final")},
                  "mesh": mesh, "data": {"prompt_files": [str(data["ppo_prompts"])],
                                         "max_prompt_length": cfg.max_prompt_length},
                  # the RM scores rollouts where it was trained to: with or without the EOS
                  "rewards": [{"kind": "model", "path": str(out / "rm" / "final"),
                               "include_eos": rm.data.append_eos, **cfg.ppo_reward}] + ppo_rule_rewards(cfg)},
                 settings(cfg.ppo))
    dpo = merge_dicts({"seed": cfg.seed, "output_dir": str(out / "dpo"), "model": {"path": str(out / "sft" / "final")},
                  "mesh": mesh, "data": {"train_files": [str(data["dpo"])], "max_length": cfg.max_length}}, settings(cfg.dpo))
    return {"sft": from_dict(SFTConfig, sft, "demo sft"), "rm": rm,
            "ppo": from_dict(RLConfig, ppo, "demo ppo"), "dpo": from_dict(DPOConfig, dpo, "demo dpo")}


RULE_FUNCTION = "jaxrlhf.tasks.length_control.score:length_fidelity_reward"


def ppo_rule_rewards(cfg: DemoConfig) -> list[dict]:
    """The rule reward source ``ppo_rule`` asks for (none when its combine is none or unset)."""
    from jaxrlhf.config import ConfigError
    from jaxrlhf.tasks.length_control.score import COMBINE

    rule = dict(cfg.ppo_rule)
    combine = rule.pop("combine", "none")
    weight = rule.pop("weight", 1.0)
    kwargs = {"combine": combine, **({"fidelity_weight": rule.pop("fidelity_weight")}
                                     if "fidelity_weight" in rule else {})}
    if rule:
        raise ConfigError(f"ppo_rule: unknown key(s) {sorted(rule)}; expected combine, fidelity_weight, weight")
    if combine == "none":
        return []
    if combine not in COMBINE:
        raise ConfigError(f"ppo_rule.combine: expected none or one of {', '.join(COMBINE)}, got {combine!r}")
    return [{"kind": "rule", "function": RULE_FUNCTION, "weight": weight, "kwargs": kwargs}]


def policy_rm_file(out: Path) -> Path:
    return out / "rm_data" / "rm_policy.jsonl"


def build_policy_rm_data(cfg: DemoConfig, out: Path, prompts_file: Path, ppo_config) -> dict:
    """The SFT model answers each RM policy prompt ``rm_policy_answers`` times (sampled as PPO's
    rollouts are: same temperature and answer budget) and the answers are ranked by the rule
    into RM rows (:mod:`jaxrlhf.tasks.length_control.policy_answers`)."""
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.stages.sample import generate_file
    from jaxrlhf.tasks.length_control.policy_answers import policy_prompts_file, rank_policy_answers

    folder = out / "rm_data"
    prompts = policy_prompts_file(prompts_file, folder / "prompts.jsonl", cfg.data.rm_policy_answers)
    mesh = make_mesh(cfg.mesh)
    rows_per_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    generation = generate_file(str(out / "sft" / "final"), str(prompts), str(folder / "samples.jsonl"),
                               config=ppo_config.rollout, batch_size=-(-POLICY_SAMPLE_BATCH // rows_per_batch) * rows_per_batch,
                               max_prompt_length=cfg.max_prompt_length, seed=cfg.seed, mesh=mesh)
    counts = rank_policy_answers(folder / "samples.jsonl", policy_rm_file(out))
    result = {"generation": generation, "ranked": counts}
    (folder / "results.json").write_text(json.dumps(result, indent=2))
    return result


def base_model_dir(cfg: DemoConfig, out: Path) -> Path:
    """The model SFT starts from (and whose tokenizer every stage reads): ``pretrained``, or the
    tiny Llama built from scratch in ``out/base``."""
    return Path(cfg.pretrained) if cfg.pretrained else out / "base"


def check_pretrained(cfg: DemoConfig) -> None:
    """A ``pretrained`` folder that cannot be a model is a one-line error before any stage runs."""
    from jaxrlhf.config import ConfigError

    folder = Path(cfg.pretrained)
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"pretrained: {folder} is not a Hugging Face model folder with its tokenizer "
                          f"(no {' or '.join(missing)}); convert one with `jaxrlhf convert gguf FILE OUT` "
                          "or point pretrained at a transformers save_pretrained folder")


def build_base_model(cfg: DemoConfig, out: Path, texts) -> Path:
    """A char tokenizer over the data and a randomly initialised tiny Llama, as an HF folder."""
    from jaxrlhf.models import LlamaConfig, create_model, save_pretrained
    from jaxrlhf.tasks.length_control import build_char_tokenizer

    base = out / "base"
    if (base / "model.safetensors").exists():
        return base
    tokenizer = build_char_tokenizer(texts)
    m = cfg.model
    arch = LlamaConfig(vocab_size=len(tokenizer), hidden_size=m.hidden_size,
                       intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
                       num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
                       max_position_embeddings=m.max_position_embeddings, rope_theta=m.rope_theta,
                       tie_word_embeddings=True,
                       extra_json=json.dumps({"bos_token_id": tokenizer.bos_token_id,
                                              "eos_token_id": tokenizer.eos_token_id,
                                              "pad_token_id": tokenizer.pad_token_id}))
    save_pretrained(create_model(arch, seed=cfg.seed), base, tokenizer=tokenizer)
    return base


def _texts(data: dict[str, Path]):
    for name in ("sft", "rm", "dpo", "ppo_prompts", "test"):
        for line in data[name].read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("prompt", "response", "chosen", "rejected"):
                if isinstance(row.get(key), str):
                    yield row[key]
            for answer in row.get("response", []) if isinstance(row.get("response"), list) else []:
                yield answer[0] if isinstance(answer, list) else answer


TIMINGS_FILE = "timings.json"  # seconds per demo step, kept across runs of one output folder


def merge_timings(previous: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """The seconds of each step over every run of one output folder: a step that ran now replaces
    its earlier time, a step skipped now (finished before) keeps it; total is their sum. A re-run of
    a finished demo so keeps the table it first wrote (issue 31, defect 6: it wrote 0s)."""
    merged = {k: v for k, v in previous.items() if k != "total"}
    merged.update({k: v for k, v in current.items() if k != "total"})
    merged["total"] = sum(merged.values())
    return merged


def run_demo(cfg: DemoConfig) -> dict:
    from jaxrlhf.stages.registry import STAGES
    from jaxrlhf.tasks.length_control import build_length_control_data, evaluate_length_control
    from jaxrlhf.tasks.length_control.report import write_report

    if cfg.pretrained:
        check_pretrained(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.yaml")
    timings: dict[str, float] = {}
    timings_file = out / TIMINGS_FILE
    previous = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        log.info("demo: %s done in %.0fs", name, timings[name])
        return result

    data_dir = out / "data"
    if (data_dir / "meta.json").exists():
        data = {p.stem: p for p in data_dir.glob("*.jsonl")}
    else:
        d = cfg.data
        data = timed("data", build_length_control_data, data_dir, seed=cfg.seed,
                     source=list(cfg.source) or None, n_sft=d.n_sft, n_rm=d.n_rm, n_test=d.n_test,
                     n_ppo_prompts=d.n_ppo_prompts, n_rm_policy=d.n_rm_policy, paragraph_chars=tuple(d.paragraph_chars),
                     sft_noise=d.sft_noise, real_share=d.real_share, n_test_held_out=d.n_test_held_out,
                     rm_unfaithful=d.rm_unfaithful, dpo_unfaithful_share=d.dpo_unfaithful_share)
    if cfg.pretrained:  # SFT starts from it: no char tokenizer, no model from scratch
        log.info("demo: starting from the pretrained model in %s", cfg.pretrained)
    elif (out / "base" / "model.safetensors").exists():
        log.info("demo: base model already built, kept")
    else:
        # with real text on, the vocabulary covers all embedded text, the held-out source's included
        real = cfg.data.real_share > 0 or cfg.data.n_test_held_out > 0
        texts = itertools.chain(_texts(data), embedded_text()) if real else _texts(data)
        timed("base model", build_base_model, cfg, out, texts)
    configs = stage_configs(cfg, out, data)
    runners = {name: STAGES[name].run for name in ("sft", "rm", "ppo", "dpo")}
    results = {}
    for name in ("sft", "rm_data", "rm", "ppo", "dpo"):
        if name == "rm_data":
            if "rm_policy_prompts" not in data:
                continue
            done = out / "rm_data" / "results.json"
            results[name] = (json.loads(done.read_text()) if done.exists() else
                             timed(name, build_policy_rm_data, cfg, out, data["rm_policy_prompts"], configs["ppo"]))
            continue
        stage_out = Path(configs[name].output_dir)
        if (stage_out / "results.json").exists():
            log.info("demo: %s already finished, skipped", name)
            results[name] = json.loads((stage_out / "results.json").read_text())
            continue
        resume = (stage_out / "checkpoints").exists()
        results[name] = timed(name, runners[name], configs[name], resume=resume)

    evals = {}
    for name in ("sft", "dpo", "ppo"):
        predictions = out / "eval" / f"{name}.jsonl"
        summary = out / "eval" / f"{name}.json"
        if summary.exists():
            evals[name] = json.loads(summary.read_text())
            continue
        evals[name] = timed(f"eval {name}", evaluate_length_control, Path(configs[name].output_dir) / "final",
                            data["test"], predictions, max_prompt_length=cfg.max_prompt_length)
        summary.write_text(json.dumps(evals[name], indent=2))
    timings = merge_timings(previous, timings)
    timings_file.write_text(json.dumps(timings, indent=2))
    report = write_report(out, evals=evals, results=results, timings=timings)
    return {"report": str(report), "scores": {k: v["mean_score"] for k, v in evals.items()},
            "seconds": timings["total"]}
