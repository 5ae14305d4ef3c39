"""Set-up every training stage shares: run folder, train state on the mesh, resume,
jitted steps with explicit shardings, device batches from a data position."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf.config import ConfigError, save_config, to_dict
from jaxrlhf.loop import Position, TrainConfig
from jaxrlhf.sharding import put_global, to_host

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageDataConfig:
    """The data settings the supervised stages (sft, rm, dpo) share."""

    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()  # empty: hold out eval_fraction of the training rows
    eval_fraction: float = 0.1
    max_length: int = 512  # tokens per prompt+answer sequence (fixed: one compilation)
    min_prompt_tokens: int = 0  # prompt tokens kept when truncating; 0: max_length // 4
    append_eos: bool = True
    strict: bool = False  # stop at the first bad row instead of skipping and counting it

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        if not 0 <= self.min_prompt_tokens < self.max_length:
            raise ValueError(f"min_prompt_tokens must be in [0, max_length={self.max_length}) "
                             f"(0: max_length // 4), got {self.min_prompt_tokens}")


def load_train_eval(data_cfg: StageDataConfig, seed: int, load: Callable):
    """Train and eval data with the cleaning report of each file set.

    ``load(files) -> (arrays, report)``. Eval data come from ``data.eval_files``, else
    from the held-out ``data.eval_fraction`` of the training rows, else there are none.
    """
    from jaxrlhf.data import split_train_eval

    if not data_cfg.train_files:
        raise ConfigError("data.train_files is empty: give at least one JSONL/JSON/parquet file")
    train, report = load(data_cfg.train_files)
    reports = {"train": report}
    if data_cfg.eval_files:
        eval_, reports["eval"] = load(data_cfg.eval_files)
    elif data_cfg.eval_fraction > 0:
        train, eval_ = split_train_eval(train, data_cfg.eval_fraction, seed)
    else:
        eval_ = None
    for split, r in reports.items():
        log.info("%s data: %s", split, r.summary())
    return train, eval_, reports


def prepare_run_dir(cfg, *, resume: bool, stage: str):
    """The run folder and its checkpointer; refuses to overwrite a run without --resume.

    Everything that can be checked without the data or the model (output folder, mesh
    against the visible devices, a resume's unchanged data order and shapes) is checked
    before anything is written. A resume never overwrites the run's first config.yaml: a
    changed config is written next to it as config.resume-N.yaml and listed in the record.
    """
    from jaxrlhf.checkpoint import Checkpointer

    out = Path(cfg.output_dir)
    check_before_writing(cfg)
    # Orbax creates the folder it is given: open it only where it exists until the checks pass
    checkpointer = (Checkpointer(out / "checkpoints", keep=cfg.train.keep_checkpoints)
                    if (out / "checkpoints").is_dir() else None)
    has_checkpoints = checkpointer is not None and checkpointer.latest_step() is not None
    if not resume and has_checkpoints:
        checkpointer.close()
        raise ConfigError(f"{out / 'checkpoints'} already holds checkpoints: pass --resume to "
                          "continue that run, or choose another output_dir")
    try:
        if resume and has_checkpoints and (out / "config.yaml").exists():
            _record_resume(cfg, out, stage)
        elif jax.process_index() == 0:
            _record_first_start(cfg, out, stage)
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        raise
    if checkpointer is None:
        checkpointer = Checkpointer(out / "checkpoints", keep=cfg.train.keep_checkpoints)
    return out, checkpointer


def check_before_writing(cfg) -> None:
    """The checks that need neither the data nor the model: seeds, the output folder, the mesh
    against the visible devices, the checkpoint count. One-line ConfigErrors, nothing written."""
    check_seeds(cfg)
    check_output_dir(Path(cfg.output_dir))
    check_mesh_fits(cfg.mesh, jax.device_count())
    if cfg.train.keep_checkpoints < 1:  # every stage's train config: 0 would delete the last one
        raise ConfigError(f"train.keep_checkpoints must be >= 1, got {cfg.train.keep_checkpoints}")


def check_seeds(config, prefix: str = "") -> None:
    """Every field named ``seed`` (at any depth) in [0, 2**32): NumPy refuses a negative seed
    only once the data are shuffled, after the run folder was written."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "seed" and isinstance(value, int) and not 0 <= value < 2**32:
            raise ConfigError(f"{prefix}seed must be in [0, 2**32), got {value}")
        if dataclasses.is_dataclass(value):
            check_seeds(value, f"{prefix}{f.name}.")


def check_output_dir(out: Path) -> None:
    """One-line ConfigError when ``out`` is a file or cannot be created, before any write."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"output_dir {out}: exists and is not a folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"output_dir {out}: not writable")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"output_dir {out}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out}: cannot be created, {parent} is not writable")


def check_mesh_fits(mesh_cfg, num_devices: int) -> None:
    """One-line ConfigError when the mesh cannot be laid over ``num_devices`` devices (an
    explicit mesh smaller than the devices is fine: it uses the first ones)."""
    sizes = mesh_cfg.sizes()
    if -1 not in sizes and math.prod(sizes) < num_devices:
        return
    try:
        mesh_cfg.resolve(num_devices)
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from None


def _record_first_start(cfg, out: Path, stage: str) -> None:
    from jaxrlhf.run_record import RECORD_FILE, record_for

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {out}: cannot be created ({e.strerror})") from None
    save_config(cfg, out / "config.yaml")
    (out / "stage").write_text(stage + "\n")
    record = {"fixed": record_for(cfg, stage), "resumes": []}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _record_resume(cfg, out: Path, stage: str) -> None:
    """Check a resume against the run's record; write the changed config beside the first."""
    from jaxrlhf.config import read_yaml, to_dict
    from jaxrlhf.run_record import RECORD_FILE, check_resume, config_changes, read_record, record_for

    current = record_for(cfg, stage)
    record = read_record(out / RECORD_FILE)
    if record is None:  # a run started before run records: nothing to compare with
        log.warning("%s has no %s: cannot check that --resume keeps the data order; recording "
                    "the current config as the run's", out, RECORD_FILE)
        record = {"fixed": current, "resumes": []}
    else:
        check_resume(record["fixed"], current)
    changes = config_changes(read_yaml(out / "config.yaml"), to_dict(cfg))
    if changes and jax.process_index() == 0:
        n = 1
        while (out / f"config.resume-{n}.yaml").exists():
            n += 1
        name = f"config.resume-{n}.yaml"
        save_config(cfg, out / name)
        record.setdefault("resumes", []).append({"config": name, "changed": changes})
        log.info("--resume with changed settings %s (saved as %s; config.yaml keeps the first)",
                 ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), name)
    if jax.process_index() == 0:
        (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def check_micro_batch(train_cfg: TrainConfig, mesh: Mesh) -> None:
    """Each micro-batch splits evenly over the data-parallel devices (data x fsdp)."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = train_cfg.batch_size // train_cfg.accumulation_steps
    if micro % data_parallel:
        raise ConfigError(f"train.batch_size / accumulation ({micro}) must be a multiple of the "
                          f"data-parallel size data x fsdp = {data_parallel}")


def steps_per_epoch_for(train_cfg: TrainConfig, mesh: Mesh, num_rows: int) -> int:
    from jaxrlhf.data import batches_per_epoch

    check_micro_batch(train_cfg, mesh)
    steps = batches_per_epoch(num_rows, train_cfg.batch_size)
    if steps == 0:
        raise ConfigError(f"{num_rows} training rows are fewer than train.batch_size {train_cfg.batch_size}")
    return steps


def build_train_state(model: nnx.Module, train_cfg: TrainConfig, total_steps: int, seed: int,
                      mesh: Mesh):
    """(graphdef, state, state shardings, optimizer) with the state materialised sharded."""
    from jaxrlhf.steps.common import init_train_state, make_optimizer, train_state_shardings

    from jaxrlhf.models.lora import split_trained

    # every Param, or with LoRA the adapters and heads only (the frozen base rides in buffers)
    graphdef, params, buffers = split_trained(model)
    tx = make_optimizer(train_cfg.optim, total_steps)
    shardings = train_state_shardings(
        jax.eval_shape(lambda: init_train_state(params, buffers, tx, seed)), mesh, tx)
    with jax.set_mesh(mesh):
        state = jax.jit(init_train_state, static_argnums=(2, 3), out_shardings=shardings)(
            params, buffers, tx, seed)
    return graphdef, state, shardings, tx


def restore_or_start(checkpointer, state, *, resume: bool) -> tuple[Any, Position]:
    restored = checkpointer.restore_latest(state) if resume else None
    if restored is not None:  # the newest checkpoint that reads back; damaged ones set aside
        _, state, meta = restored
        start = Position(meta["epoch"], meta["batch"], meta["steps"])
        log.info("resumed from step %d (epoch %d, batch %d)", start.steps, start.epoch, start.batch)
        return state, start
    if resume:
        log.info("--resume: no checkpoint in %s yet, starting from the beginning", checkpointer.directory)
    return state, Position()


def stack_micro_batches(batch: dict[str, np.ndarray], parts: int) -> dict[str, np.ndarray]:
    """[B, ...] -> [parts, B / parts, ...] (the step's accumulation axis first)."""
    return {k: v.reshape((parts, v.shape[0] // parts) + v.shape[1:]) for k, v in batch.items()}


def pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pad a short (last) eval batch with all-zero (fully masked) rows, keeping shapes fixed."""
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def jit_train_step(step_fn: Callable, *, state_shardings, example_batch: dict, mesh: Mesh,
                   frozen: Any = None, frozen_shardings: Any = None):
    """Jit ``step_fn(state, batch)`` or ``step_fn(state, frozen, batch)`` with explicit
    shardings and the state donated; returns (step(state, batch), batch shardings)."""
    from jaxrlhf.steps.common import batch_shardings

    batch_sh = batch_shardings(mesh, example_batch)
    if frozen is None:
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sh),
                         out_shardings=(state_shardings, None), donate_argnums=0)
        call = jitted
    else:
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, batch_sh),
                         out_shardings=(state_shardings, None), donate_argnums=0)
        call = lambda state, batch: jitted(state, frozen, batch)

    def step(state, batch):
        with jax.set_mesh(mesh):
            return call(state, batch)

    return step, batch_sh


def train_batches(data, train_cfg: TrainConfig, *, seed: int, batch_sh) -> Callable[[int, int], Iterator]:
    from jaxrlhf.data import iterate_batches

    def batches(epoch: int, start_batch: int):
        for _, batch in iterate_batches(data, train_cfg.batch_size, seed=seed, epoch=epoch,
                                        start_batch=start_batch, group_by_length=train_cfg.group_by_length,
                                        pad_to_multiple=train_cfg.pad_to_multiple):
            yield put_global(stack_micro_batches(batch, train_cfg.accumulation_steps), batch_sh)

    return batches


def eval_batches(data, batch_size: int, mesh: Mesh, *, pad_to_multiple: int = 0) -> Iterator[tuple[int, dict]]:
    """(rows in the batch, device batch [1, batch_size, ...]) over the whole set, in order,
    each cut to a multiple of ``pad_to_multiple`` tokens when that is > 0."""
    from jaxrlhf.data import iterate_batches
    from jaxrlhf.steps.common import batch_shardings

    for _, batch in iterate_batches(data, batch_size, seed=0, epoch=0, shuffle=False, drop_last=False,
                                    pad_to_multiple=pad_to_multiple):
        rows = next(iter(batch.values())).shape[0]
        batch = stack_micro_batches(pad_rows(batch, batch_size), 1)
        yield rows, put_global(batch, batch_shardings(mesh, batch))


def add_sums(total: dict | None, part: dict) -> dict[str, np.ndarray]:
    """Accumulate one eval batch's sums on the host (gathered across hosts)."""
    part = jax.tree.map(to_host, part)
    return part if total is None else jax.tree.map(np.add, total, part)


@dataclasses.dataclass
class SupervisedParts:
    """What a supervised stage (sft, rm, dpo) adds to the shared recipe of :func:`run_supervised`.

    step: ``step(state, batch)`` or, with ``frozen``, ``step(state, frozen, batch)`` (un-jitted);
    evaluate(state) -> metrics, or None without eval data; finalize(state) -> (model to save,
    extra results.json entries). ``train``/``eval_data`` may differ from the loaded data (DPO
    adds precomputed reference log-probs)."""

    step: Callable
    train: Any
    eval_data: Any
    evaluate: Callable | None
    finalize: Callable
    frozen: Any = None
    frozen_shardings: Any = None


@dataclasses.dataclass(frozen=True)
class SupervisedStage:
    """A supervised stage: its name, how it loads data and its model, and its parts."""

    name: str
    load_data: Callable  # (cfg, tokenizer) -> (train, eval or None, reports)
    load_model: Callable  # (cfg, mesh) -> nnx.Module
    # (cfg, *, graphdef, tx, mesh, train, eval_data, start_adapters) -> SupervisedParts; start_adapters:
    # a copy of the LoRA adapters before training (DPO's reference on the shared base), None without LoRA
    build: Callable
    postfix: tuple[str, ...] = ("loss",)


def loop_settings(train_cfg: TrainConfig, steps_per_epoch: int, desc: str, postfix=("loss",)):
    from jaxrlhf.trainer import LoopSettings

    return LoopSettings(total_steps=train_cfg.total_steps(steps_per_epoch), steps_per_epoch=steps_per_epoch,
                        log_every=train_cfg.log_every, eval_every=train_cfg.eval_every,
                        save_every=train_cfg.save_every, max_nonfinite_steps=train_cfg.max_nonfinite_steps,
                        desc=desc, postfix=postfix)


def run_supervised(cfg, stage: SupervisedStage, *, resume: bool = False) -> dict:
    """The recipe every supervised stage shares: run folder, data, model, sharded train state,
    resume, jitted step, the trainer's loop, final export and results.json."""
    from jaxrlhf.models import load_tokenizer
    from jaxrlhf.models.lora import reference_adapters
    from jaxrlhf.sharding import make_mesh
    from jaxrlhf.steps.common import learning_rate_schedule
    from jaxrlhf.tokenizer_check import check_stage_tokenizer
    from jaxrlhf.trainer import Trainer

    # Everything the config, the tokenizer and the data can refuse is refused before the run
    # folder is written (a mesh that does not divide the batch, num_slots below a row's K...).
    check_before_writing(cfg)
    mesh = make_mesh(cfg.mesh)
    check_micro_batch(cfg.train, mesh)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.path)
    # before any weights load: a reference model (DPO) must fit the tokenizer as well
    check_stage_tokenizer(tokenizer, cfg.model, cfg.tokenizer or cfg.model.path,
                          extra_models=[getattr(cfg, "reference_path", None)])
    train, eval_, reports = stage.load_data(cfg, tokenizer)
    steps_per_epoch = steps_per_epoch_for(cfg.train, mesh, len(train))
    out, checkpointer = prepare_run_dir(cfg, resume=resume, stage=stage.name)
    total = cfg.train.total_steps(steps_per_epoch)

    model = stage.load_model(cfg, mesh)
    graphdef, state, shardings, tx = build_train_state(model, cfg.train, total, cfg.seed, mesh)
    del model  # the state holds its arrays now
    # taken before a resume replaces them: a reference is the starting policy
    start_adapters = reference_adapters(state.params) if cfg.model.lora is not None else None
    state, start = restore_or_start(checkpointer, state, resume=resume)
    parts = stage.build(cfg, graphdef=graphdef, tx=tx, mesh=mesh, train=train, eval_data=eval_,
                        start_adapters=start_adapters)
    example = stack_micro_batches(parts.train.take(np.arange(cfg.train.batch_size)).as_dict(),
                                  cfg.train.accumulation_steps)
    step, batch_sh = jit_train_step(parts.step, state_shardings=shardings, example_batch=example, mesh=mesh,
                                    frozen=parts.frozen, frozen_shardings=parts.frozen_shardings)
    trainer = Trainer(loop_settings(cfg.train, steps_per_epoch, stage.name, stage.postfix), out=out,
                      checkpointer=checkpointer, logging_config=cfg.logging, run_config=to_dict(cfg),
                      learning_rate=functools.partial(_float_schedule, learning_rate_schedule(cfg.train.optim, total)))
    result = trainer.fit(state, step, train_batches(parts.train, cfg.train, seed=cfg.seed, batch_sh=batch_sh),
                         start, evaluate=parts.evaluate if parts.eval_data is not None else None)
    final, extra = parts.finalize(result.state)
    return finish_run(out, final, tokenizer, position=result.position, last_eval=result.last_eval,
                      reports=reports, checkpointer=checkpointer, **extra)


def _float_schedule(schedule, step: int) -> float:
    return float(schedule(step))


def merged_model(graphdef, state):
    """The trained model of a supervised state (params + buffers)."""
    return nnx.merge(graphdef, state.params, state.buffers)


def finish_run(out: Path, model, tokenizer, *, position: Position, last_eval: dict, reports: dict,
               checkpointer, **extra) -> dict:
    """Save the final model to ``out/final`` and write ``results.json`` (process 0)."""
    from jaxrlhf.models import save_pretrained

    save_pretrained(model, out / "final", tokenizer=tokenizer)
    results = {"steps": position.steps, "eval": last_eval, **extra,
               "data": {split: r.as_dict() for split, r in reports.items()},
               "final_model": str(out / "final")}
    if jax.process_index() == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    checkpointer.close()
    return results


def eval_batch_size(train_cfg: TrainConfig) -> int:
    return train_cfg.eval_batch_size or train_cfg.batch_size // train_cfg.accumulation_steps


def with_mesh(fn: Callable, mesh: Mesh) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)
    return wrapped


class Table:
    """Named arrays sharing their first dimension (rows), batched like the data arrays."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = dict(columns)

    def __len__(self) -> int:
        return next(iter(self.columns.values())).shape[0]

    def take(self, index) -> "Table":
        index = np.asarray(index, dtype=np.int64)
        return Table({k: v[index] for k, v in self.columns.items()})

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.columns)


def load_policy(model_cfg, *, mesh: Mesh, seed: int):
    """The causal LM to train: from model.path (an HF folder), or a random init of model.arch."""
    from jaxrlhf.config import read_yaml
    from jaxrlhf.models import config_from_hf, create_model, from_pretrained

    common = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, remat=model_cfg.remat,
                  mesh=mesh)
    if model_cfg.path:
        model = from_pretrained(model_cfg.path, **common)
    elif model_cfg.arch:
        arch = config_from_hf(read_yaml(model_cfg.arch), strict=True, source=str(model_cfg.arch))
        model = create_model(arch, seed=seed, **common)
    else:
        raise ConfigError("set model.path (a Hugging Face folder) or model.arch (an architecture YAML)")
    return with_lora(with_logits_path(with_attention(model, model_cfg), model_cfg), model_cfg, mesh=mesh, seed=seed)


def with_attention(model, model_cfg):
    """``model`` computing attention with the backend ``model.attention`` names."""
    from jaxrlhf.models.base import set_attention
    try:
        return set_attention(model, model_cfg.attention)
    except ValueError as e:  # a kernel for another platform: one line naming the key
        raise ConfigError(str(e)) from None


def with_logits_path(model, model_cfg):
    """``model`` getting its losses' token log-probs by the path ``model.logits`` names."""
    from jaxrlhf.models.logits_path import set_logits_path
    return set_logits_path(model, model_cfg.logits, model_cfg.logits_chunk_size)


def with_lora(model, model_cfg, *, mesh: Mesh, seed: int):
    """``model`` with the adapters ``model.lora`` asks for (unchanged without ``model.lora``)."""
    if model_cfg.lora is None:
        return model
    from jaxrlhf.peft_io import attach_lora
    try:
        return attach_lora(model, model_cfg.lora, seed=seed, mesh=mesh)
    except ValueError as e:
        raise ConfigError(f"model.lora: {e}") from None
