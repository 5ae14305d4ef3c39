"""Model and dataset ids resolve through a local Hugging Face cache, offline (issue 31,
defect 10): ``model.path: some-org/some-model`` and ``data.train_files: [some-org/data]``."""

import json
from pathlib import Path

import pytest

from jaxrlhf.cli import main
from jaxrlhf.hub import HubError, resolve_data_files, resolve_model_path
from rm_fixtures import tiny_model_folder

ROWS = [{"prompt": "q: abc ", "completion": "abc"}, {"prompt": "q: xy ", "completion": "xy"}] * 4


def cache_entry(cache: Path, kind: str, repo_id: str, revision: str = "0123abcd") -> Path:
    """The hub cache layout: {kind}s--org--name/snapshots/<rev>/ and refs/main naming <rev>."""
    entry = cache / f"{kind}s--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the ids are not local folders
    return cache


def write_rows(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ids_resolve_from_the_cache_and_misses_say_where(hf_cache, tmp_path):
    model = cache_entry(hf_cache, "model", "some-org/some-model")
    (model / "config.json").write_text("{}")
    data = cache_entry(hf_cache, "dataset", "some-org/data")
    write_rows(data / "data" / "train-00000-of-00001.jsonl", ROWS)
    write_rows(data / "data" / "test-00000-of-00001.jsonl", ROWS[:2])
    assert resolve_model_path("some-org/some-model") == model
    assert resolve_data_files("some-org/data") == [str(data / "data" / "train-00000-of-00001.jsonl")]
    assert resolve_data_files("some-org/data", "test") == [str(data / "data" / "test-00000-of-00001.jsonl")]
    local = Path("some-org/some-model")  # a local folder of that name wins
    local.mkdir(parents=True)
    assert resolve_model_path("some-org/some-model") == local
    assert resolve_data_files("runs/x.jsonl") == ["runs/x.jsonl"]  # a file name is never an id

    with pytest.raises(HubError, match=rf"^other-org/model: not a local path, and not in the Hugging Face cache "
                                       rf"{hf_cache} \(HF_HUB_OFFLINE is set, so the hub was not asked\)$"):
        resolve_model_path("other-org/model")
    with pytest.raises(HubError, match=r"some-org/data: no split 'validation' .* \(splits: train, test\)"):
        resolve_data_files("some-org/data", "validation")


@pytest.mark.slow
def test_sft_from_a_cached_model_id_trains_and_exports(hf_cache, tmp_path, capsys):
    tiny_model_folder(cache_entry(hf_cache, "model", "some-org/some-model"))
    write_rows(cache_entry(hf_cache, "dataset", "some-org/sft-data") / "data" / "train-00000-of-00001.jsonl", ROWS)
    config = tmp_path / "sft.yaml"
    config.write_text("""
output_dir: runs/sft
model: {path: some-org/some-model}
mesh: {data: 1, fsdp: 1, tensor: 1}
data: {train_files: [some-org/sft-data:train], eval_fraction: 0.25, max_length: 24}
train: {epochs: 1, batch_size: 2, log_every: 1}
""")
    assert main(["sft", "--config", str(config)]) == 0
    assert "saved to runs/sft/final" in capsys.readouterr().out
    assert main(["export", "runs/sft", "--out", "exported"]) == 0
    exported = {p.name for p in Path("exported").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= exported

    config.write_text(config.read_text().replace("some-org/some-model", "some-org/absent"))
    assert main(["sft", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith(f"some-org/absent: not a local path, and not in the Hugging Face "
                                            f"cache {hf_cache} (HF_HUB_OFFLINE is set, so the hub was not asked)")
