"""``jaxrlhf config show STAGE``: every key with its default and a description, generated from
the config dataclasses and their comments (issue 31, defect 7: keys were not discoverable)."""

import dataclasses
import importlib

import pytest
import yaml

from jaxrlhf.cli import STAGES, main
from jaxrlhf.config_doc import config_keys


def shown(capsys, stage) -> dict[str, tuple[str, str]]:
    """``{key: (default, description)}`` as printed."""
    assert main(["config", "show", stage]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"# jaxrlhf {stage} --config FILE")
    rows = {}
    for line in lines[1:]:
        body, _, text = line.partition("  # ")
        key, _, default = body.strip().partition(" ")
        rows[key] = (default.strip(), text)
    return rows


def walk(cls, prefix="", instance=None):
    """(dotted key, default or a section marker) of every field, independently of config_doc."""
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name) if instance is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        if dataclasses.is_dataclass(value):
            yield prefix + f.name, "section"
            yield from walk(type(value), prefix + f.name + ".", value)
        else:
            yield prefix + f.name, value


def preset_of(stage) -> dict:
    """A preset stage's default keys, flattened (the RL stages: grpo, rloo...); {} otherwise."""
    info, flat = STAGES[stage], {}

    def flatten(d, at=""):
        for k, v in d.items():
            flatten(v, f"{at}{k}.") if isinstance(v, dict) and v else flat.__setitem__(at + k, v)

    flatten(info.defaults() if hasattr(info, "defaults") else {})
    return flat


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo"])
def test_every_key_and_default_is_shown(stage, capsys):
    module, name = STAGES[stage][:2]
    cls = getattr(importlib.import_module(module), name)
    rows = shown(capsys, stage)
    expected = {**dict(walk(cls)), **preset_of(stage)}
    assert set(expected) <= set(rows)
    optional = [k for k, v in expected.items() if v is None]  # an optional section lists its keys too
    assert all("[]." in k or any(k.startswith(o + ".") for o in optional) for k in set(rows) - set(expected))
    for key, value in expected.items():
        if value == "section":
            assert rows[key][0] == "", key
        else:  # what is printed reads back as the default
            printed = yaml.safe_load(rows[key][0])
            assert printed == (list(value) if isinstance(value, tuple) else value), key
    assert rows["model.path"][1] == "a Hugging Face folder (config.json + safetensors)"  # the field's comment
    assert rows["train.optim.max_grad_norm" if stage != "ppo" else "train.actor_optim.max_grad_norm"][1] \
        == "0 disables clipping"
    assert rows["seed"][1].startswith("seeds initialisation")  # RunConfig's comment for an uncommented repeat
    assert rows["model"][1] == "Which model to start from and how to run it."  # a section: its docstring


def test_ppo_lists_its_reward_sources(capsys):
    rows = shown(capsys, "ppo")
    assert rows["rewards"][0] == "[]" and rows["rewards[].kind"][0] == "model"  # a list of sections: its item keys


def test_preset_stages_show_their_preset_defaults(capsys):
    presets = [name for name in STAGES if preset_of(name)]
    if not presets:
        pytest.skip("no stage with preset defaults in this version")
    for name in presets:
        rows = shown(capsys, name)
        for key, value in preset_of(name).items():
            assert yaml.safe_load(rows[key][0]) == (list(value) if isinstance(value, tuple) else value), (name, key)


def test_description_sources():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        """Inner settings.

        More text that is not shown."""

        depth: int = 2  # how deep
        #   and why (a continuation)

    @dataclasses.dataclass(frozen=True)
    class Outer:
        # a block comment above,
        # over two lines
        name: str = "x"
        rate: float = dataclasses.field(default=0.5, metadata={"help": "from metadata"})  # not this
        inner: Inner = Inner()
        items: tuple[Inner, ...] = ()
        flag: bool = True

    assert [(r.key, r.default, r.help) for r in config_keys(Outer)] == [
        ("name", "x", "a block comment above, over two lines"),
        ("rate", "0.5", "from metadata"),
        ("inner", "", "Inner settings."),
        ("inner.depth", "2", "how deep and why (a continuation)"),
        ("items", "[]", "Inner settings."),
        ("items[].depth", "2", "how deep and why (a continuation)"),
        ("flag", "true", ""),
    ]


def test_optional_sections_list_their_keys():
    from jaxrlhf.tracking import LoggingConfig

    @dataclasses.dataclass(frozen=True)
    class WithLogging:
        logging: LoggingConfig = LoggingConfig()

    rows = {r.key: (r.default, r.help) for r in config_keys(WithLogging)}
    assert rows["logging.wandb"][0] == "null" and rows["logging.wandb.mode"][0] == "online"
    assert rows["logging.wandb.project"] == ("null", "the W&B project (required to log to W&B)")


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["config", "show", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
