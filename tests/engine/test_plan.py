"""The compiled plan, the registry behind it, and the typed build records."""
from __future__ import annotations

import json
import pickle

import pytest

from x2i.core.config import ConfigError, to_dict
from x2i.core.errors import X2IError
from x2i.engine import plan as plan_module
from x2i.engine.build import build
from x2i.engine.manifest import Manifest, read_manifest, write_manifest
from x2i.engine.plan import FinalizeStep, Plan, compile_plan, make_source
from x2i.engine.recipe import Recipe, SourceConfig, list_recipes, load_recipe
from x2i.engine.registry import BUILDERS, SOURCES, STEPS


def recipe_with(**changes) -> Recipe:
    data = load_recipe("subject-driven").to_dict()
    data.update(changes)
    return Recipe.from_dict(data)


def test_every_shipped_recipe_names_registered_parts():
    for name in list_recipes():
        r = load_recipe(name)
        assert r.builder in BUILDERS and r.source.format in SOURCES, name
        assert all(step["name"] in STEPS for step in r.steps), name


@pytest.mark.parametrize("changes, error, hint", [
    ({"builder": "subject_drivn"}, X2IError, "unknown builder 'subject_drivn'; did you mean 'subject_driven'"),
    ({"steps": [{"name": "dedupe"}]}, ConfigError, "steps[0]: unknown step 'dedupe'; did you mean 'dedup'"),
])
def test_unknown_names_say_did_you_mean(changes, error, hint):
    with pytest.raises(error) as caught:
        compile_plan(recipe_with(**changes))
    assert hint in str(caught.value)


@pytest.mark.parametrize("recipe", ["layout", "referring_segmentation", "subject_driven"])
def test_bad_jpeg_settings_stop_at_compile_for_every_builder(recipe):
    """Some builders read output.jpeg only per sample: the plan checks it first, so no build starts with a
    quality libjpeg cannot write (the subsampling's values are checked when the recipe is read)."""
    data = load_recipe(recipe).to_dict()
    data["output"]["jpeg_quality"] = 0
    with pytest.raises(ConfigError, match=r"output: JPEG quality must be in 1..100, got 0"):
        compile_plan(Recipe.from_dict(data))


def test_unknown_source_format_says_did_you_mean():
    with pytest.raises(X2IError, match="unknown source format 'grti'; did you mean 'grit'"):
        make_source(SourceConfig(format="grti"))


def test_plan_holds_builder_steps_and_post_build_hooks():
    plan = compile_plan(recipe_with(steps=[{"name": "caption_clean"}, {"name": "dedup"}]))
    assert type(plan.builder).__name__ == "SubjectDrivenBuilder" and plan.params is plan.builder.params
    assert [s.name for s in plan.steps[-3:]] == ["caption_clean", "dedup", "finalize"]
    assert isinstance(plan.steps[-1], FinalizeStep)
    assert [s.name for s in plan.post_build] == ["dedup"]


def test_a_plan_pickles_as_its_recipe_and_compiles_once_per_process(monkeypatch):
    plan = compile_plan(load_recipe("subject-driven"))
    monkeypatch.setattr(plan_module, "_WORKER_PLANS", {})
    blob = pickle.dumps(plan)
    assert b"SubjectDrivenStep" not in blob  # steps (models, files) never travel
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert isinstance(first, Plan) and first is second and first is not plan
    assert first.recipe == plan.recipe


def test_an_in_process_build_makes_builder_and_source_once(tmp_path, monkeypatch):
    made = {"builder": 0, "source": 0}
    builder_cls, source_cls = BUILDERS.get("subject_driven"), SOURCES.get("grit")

    def counting(kind, cls):
        original = cls.__init__

        def init(self, *a, **k):
            made[kind] += 1
            original(self, *a, **k)

        monkeypatch.setattr(cls, "__init__", init)

    counting("builder", builder_cls)
    counting("source", source_cls)
    manifest = build(load_recipe("subject-driven"), tmp_path / "out", limit=130, progress=False)
    assert len(manifest.partitions) >= 3 and made == {"builder": 1, "source": 1}


def test_manifest_round_trips_byte_for_byte(tmp_path):
    built = build(load_recipe("subject-driven"), tmp_path / "out", limit=10, progress=False)
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert read_manifest(tmp_path / "out") == built
    write_manifest(tmp_path, read_manifest(tmp_path / "out"))
    assert (tmp_path / "manifest.json").read_text() == text


def test_a_v1_manifest_from_before_the_error_policy_still_loads(tmp_path):
    data = json.loads(_minimal_manifest())
    for key in ("unexpected_errors", "policy", "scores", "post_build", "notes"):
        data.pop(key)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(tmp_path)
    assert manifest.unexpected_errors == 0 and manifest.policy.max_error_rate == 0.0
    assert manifest.policy.allow_empty is False and manifest.post_build == {} and manifest.notes == []


def test_a_manifest_with_an_unknown_key_is_refused_naming_it(tmp_path):
    data = json.loads(_minimal_manifest())
    data["rowz"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(X2IError, match="rowz: unknown key; did you mean 'rows'"):
        read_manifest(tmp_path)


def _minimal_manifest() -> str:
    manifest = Manifest(schema_version=1, x2i_version="0.1.0", created_at="2025-01-01T00:00:00Z", name="n",
                        recipe={"name": "n"}, source={"format": "grit"}, limit=None, rows=0, tasks={},
                        source_samples=0, rejects={}, rejects_total=0, rejects_files=[], shards=[], partitions=[])
    return json.dumps(to_dict(manifest))
