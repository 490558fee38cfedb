"""Configuration files load into their dataclasses once, and every fault names the file and key."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lumbarseg import measure, postprocess, tissues
from lumbarseg.config import ConfigError, dump_config, other_keys, read_config
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import MODEL_FILE, ModelInfo, Segmenter
from lumbarseg.training import PRESETS, REPO, FusionRecipe, TrainingPreset


@dataclass(frozen=True)
class Inner:
    size: int
    rate: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    flags: tuple[bool, ...] = ()
    pairs: tuple[tuple[str, float], ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    limit: int | None = None


@dataclass(frozen=True)
class Open:
    name: str
    rest: dict = other_keys()


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    return path


def test_a_file_builds_its_dataclass_nested_and_converted(tmp_path):
    path = write(tmp_path, {"about": "why", "name": "a", "inner": {"about": "why too", "size": 3, "rate": 1},
                            "flags": [True], "pairs": [["severe", 50]], "weights": {"about": "x", "disc": 2},
                            "limit": None})
    got = read_config(Outer, path)
    assert got == Outer("a", Inner(3, 1.0), (True,), (("severe", 50.0),), {"disc": 2.0}, None)
    assert isinstance(got.inner.rate, float) and isinstance(got.pairs, tuple)
    assert read_config(Outer, {"name": "b", "inner": {"size": 1}}, where="memory") == Outer("b", Inner(1))
    assert read_config(Outer, dump_config(got), where="memory") == got


@pytest.mark.parametrize("data, reason", [
    ({"inner": {"size": 1}}, "x.json: missing name"),
    ({"name": "a", "inner": {}}, "x.json: missing inner.size"),
    ({"name": "a", "inner": {"size": 1}, "colour": "red"}, "x.json: unknown colour (the file takes name, inner,"),
    ({"name": "a", "inner": {"size": 1, "sise": 2}}, "x.json: unknown inner.sise (inner takes size, rate)"),
    ({"name": "a", "inner": {"size": "48"}}, 'x.json: inner.size: expected int, got "48"'),
    ({"name": "a", "inner": {"size": 1.5}}, "x.json: inner.size: expected int, got 1.5"),
    ({"name": "a", "inner": {"size": True}}, "x.json: inner.size: expected int, got true"),
    ({"name": "a", "inner": {"size": 1, "rate": "fast"}}, 'x.json: inner.rate: expected float, got "fast"'),
    ({"name": 7, "inner": {"size": 1}}, "x.json: name: expected str, got 7"),
    ({"name": "a", "inner": [1]}, "x.json: inner: expected an object, got a list"),
    ({"name": "a", "inner": {"size": 1}, "flags": [True, 1]}, "x.json: flags[1]: expected bool, got 1"),
    ({"name": "a", "inner": {"size": 1}, "pairs": [["mild", 1, 2]]}, "x.json: pairs[0]: expected 2 items, got 3"),
    ({"name": "a", "inner": {"size": 1}, "weights": {"disc": "2"}}, 'x.json: weights.disc: expected float, got "2"'),
    ({"name": "a", "inner": {"size": 1}, "limit": "none"}, 'x.json: limit: expected int, got "none"'),
])
def test_every_fault_names_the_file_and_the_key(tmp_path, data, reason):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        read_config(Outer, path)
    assert str(err.value).startswith(str(tmp_path / reason)), str(err.value)
    assert err.value.path == str(path) and not isinstance(err.value, StudyError)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(Outer, tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("root:x:0:0")
    with pytest.raises(ConfigError, match="not a JSON file"):
        read_config(Outer, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="expected an object, got"):
        read_config(Outer, write(tmp_path, [1, 2]))


def test_other_keys_keeps_what_the_dataclass_does_not_name(tmp_path):
    got = read_config(Open, write(tmp_path, {"name": "a", "history": [1], "about": "docs"}))
    assert got == Open("a", {"history": [1]})
    assert dump_config(got) == {"name": "a", "history": [1]}


def test_a_bad_preset_is_a_config_error_not_a_study_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no such training preset; known: \[.*'smoke'"):
        TrainingPreset.load("nonexistent")
    data = json.loads((PRESETS / "smoke.json").read_text())
    data["fusion"]["patch"] = "48"
    with pytest.raises(ConfigError, match='fusion.patch: expected int, got "48"') as err:
        TrainingPreset.load(write(tmp_path, data))
    assert not isinstance(err.value, StudyError)


def test_the_cli_says_a_bad_preset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lumbarseg.cli", "train", "--data", str(tmp_path),
                             "--preset", "nonexistent", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"lumbarseg train: error: nonexistent: no such training preset; known: "
        f"{sorted(p.stem for p in PRESETS.glob('*.json'))}"]


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS.glob("*.json")))
def test_every_shipped_preset_loads(name):
    preset = TrainingPreset.load(name)
    assert isinstance(preset.fusion, FusionRecipe) and preset.phantoms.seed >= 0


def test_the_findings_and_postprocess_configs_load_once():
    findings = measure.load_config()
    assert findings is measure.load_config()  # cached: read and checked once
    assert findings.herniation.margin_mm == 2.0 and findings.stenosis.grades_below_mm2[0] == ("severe", 50.0)
    post = postprocess.load_config()
    assert post is postprocess.load_config()
    assert set(post.min_volume_mm3) <= set(tissues.TISSUE_NAMES) and post.max_sacrum_length_mm == 150.0


def test_the_shipped_model_json_loads_unchanged():
    path = REPO / "weights" / "lite" / MODEL_FILE
    before = path.read_bytes()
    info = ModelInfo.load(path.parent)
    assert info.preset == "lite" and info.spacing_mm == 1.5 and info.tissues == tuple(tissues.TISSUE_NAMES)
    assert info.version == "shipped" and info.fusion.hidden is None
    assert {"training", "history", "data", "split"} <= set(info.record)
    written = json.loads(before)
    assert {k: v for k, v in dump_config(info).items() if k in written} == written  # the record as it was
    assert path.read_bytes() == before


def test_a_bad_model_json_names_the_folder_or_key(tmp_path):
    with pytest.raises(ConfigError, match="no model.json: not a lumbarseg weights folder"):
        Segmenter.load(tmp_path)
    (tmp_path / MODEL_FILE).write_text(json.dumps({"preset": "lite", "spacing_mm": "1.5", "tissues": ["background"]}))
    with pytest.raises(ConfigError, match=f'{MODEL_FILE}: spacing_mm: expected float, got "1.5"'):
        Segmenter.load(tmp_path)
