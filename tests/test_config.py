"""Every shipped YAML loads; unknown keys, wrong types and bad values fail naming the key."""

from pathlib import Path

import pytest

from jaxrlhf.config import ConfigError, ModelConfig, RunConfig, load_config, read_yaml, resolve_path
from jaxrlhf.models import ARCHITECTURES, CheckpointError, config_from_hf
from jaxrlhf.sharding import MeshConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# folder under configs/ -> how its files are loaded
def _rm_config():
    from jaxrlhf.stages.rm import RMConfig
    return RMConfig


def _stage_config(module, name):
    import importlib
    return lambda: getattr(importlib.import_module(module), name)


RUN_CONFIG_DIRS = {"init": lambda: RunConfig, "rm": _rm_config,
                   "sft": _stage_config("jaxrlhf.stages.sft", "SFTConfig"),
                   "dpo": _stage_config("jaxrlhf.stages.dpo", "DPOConfig"),
                   "ppo": _stage_config("jaxrlhf.stages.rl", "RLConfig")}


def all_configs():
    files = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
    assert files, "configs/ has no YAML files"
    return files


@pytest.mark.parametrize("path", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    folder = path.relative_to(CONFIGS).parts[0]
    if folder == "models":
        arch = config_from_hf(read_yaml(path), strict=True, source=str(path))
        assert arch.model_type in ARCHITECTURES
        return
    if folder == "length_control":  # demo recipes: merged over the demo's defaults
        from jaxrlhf.tasks.length_control.pipeline import load_demo_config
        cfg = load_demo_config(path)
        # a recipe changes the demo: the model it starts from, or the data it trains on
        assert cfg.pretrained or cfg.data != load_demo_config().data, f"{path}: changes nothing"
        return
    assert folder in RUN_CONFIG_DIRS, f"no loader registered for configs/{folder}/"
    cfg = load_config(RUN_CONFIG_DIRS[folder](), path)
    if getattr(cfg.model, "arch", None):
        assert resolve_path(cfg.model.arch, path).exists(), cfg.model.arch
    data = getattr(cfg, "data", None)
    for data_file in getattr(data, "train_files", ()) + getattr(data, "prompt_files", ()):
        assert resolve_path(data_file, path).exists(), data_file


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\nmodel: {path: some/dir}\nmesh: {data: 2}\n")
    cfg = load_config(RunConfig, path, ["model.dtype=bfloat16", "mesh.tensor=2", "seed=7"])
    assert cfg == RunConfig(seed=7, model=ModelConfig(path="some/dir", dtype="bfloat16"),
                            mesh=MeshConfig(data=2, fsdp=-1, tensor=2))
    assert load_config(RunConfig) == RunConfig()


@pytest.mark.parametrize("text, overrides, needles", [
    ("modle: {path: x}\n", [], ["unknown key 'modle'", "did you mean 'model'"]),
    ("model: {dtyp: bfloat16}\n", [], ["unknown key 'model.dtyp'", "'model.dtype'"]),
    ("seed: 1\n", ["mesh.tensr=2"], ["--set", "unknown key 'mesh.tensr'"]),
    ("seed: one\n", [], ["seed", "expected int", "'one'"]),
    ("model: {remat: 3}\n", [], ["model.remat", "true or false"]),
    ("model: {dtype: float8}\n", [], ["model", "dtype must be one of"]),
    ("mesh: {data: -1, fsdp: -1}\n", [], ["mesh", "at most one axis"]),
    ("model: 5\n", [], ["model", "expected a mapping"]),
    ("- a\n- b\n", [], ["expected a mapping at the top level"]),
    ("seed: [1\n", [], ["c.yaml:", "invalid YAML"]),
    ("seed: 1\n", ["seed"], ["--set 'seed'", "section.key=value"]),
    ("seed: 1\n", ["seed.x=2"], ["seed is not a section"]),
])
def test_errors_name_the_key(tmp_path, text, overrides, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path, overrides)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_exponent_without_dot_is_a_float(tmp_path):
    from jaxrlhf.stages.sft import SFTConfig
    cfg = load_config(SFTConfig, None, ["model.path=x", "train.optim.learning_rate=1e-3"])
    assert cfg.train.optim.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="expected float"):
        load_config(SFTConfig, None, ["model.path=x", "train.optim.learning_rate=fast"])


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(RunConfig, tmp_path / "nope.yaml")


def test_architecture_yaml_is_strict(tmp_path):
    hf = read_yaml(CONFIGS / "models" / "llama-tiny.yaml")
    with pytest.raises(CheckpointError, match="'hiden_size' \\(did you mean 'hidden_size'\\?\\)"):
        config_from_hf({**hf, "hiden_size": 3}, strict=True, source="x.yaml")
    # transformers' config.json files carry many keys we do not model: not strict there
    config_from_hf({**hf, "some_future_key": 1}, strict=False)
    with pytest.raises(CheckpointError, match="not a multiple of num_key_value_heads"):
        config_from_hf({**hf, "num_key_value_heads": 3}, source="x.yaml")
    with pytest.raises(CheckpointError, match="unsupported rope_scaling type 'yarn'"):
        config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, source="x.yaml")


def test_the_demo_has_one_source_of_defaults():
    """demo.yaml (shipped in the package) is the demo's only default: the dataclass holds none of
    its values, and `jaxrlhf data length-control` builds the demo's data by default."""
    import dataclasses

    from jaxrlhf.tasks.length_control.pipeline import DEMO_DEFAULTS, DemoConfig, DemoDataConfig, load_demo_config
    with pytest.raises(TypeError):
        DemoConfig()  # no defaults of its own for data, model, lengths
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(DemoDataConfig))
    cfg = load_demo_config()
    assert cfg.data.n_sft == read_yaml(DEMO_DEFAULTS)["data"]["n_sft"]
