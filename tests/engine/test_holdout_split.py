"""Holdout split: whole source items, by a hash of their key; mixed few-shot samples are rejected."""
from x2i.core.sample import Sample
from x2i.engine.holdout import TEST, TRAIN, HoldoutStep, held_out, item_key, split_of
from x2i.engine.steps import Context


def sample(source_key, source="grit", **meta):
    return Sample("t", "x", None, source=source, source_key=source_key, meta=meta)


def test_the_fraction_is_met_and_the_choice_is_stable():
    keys = [str(i) for i in range(20_000)]
    chosen = [k for k in keys if held_out("grit", k, 0.1)]
    assert 0.09 < len(chosen) / len(keys) < 0.11
    assert chosen == [k for k in keys if held_out("grit", k, 0.1)]  # deterministic
    assert set(chosen) <= {k for k in keys if held_out("grit", k, 0.2)}  # a larger holdout only adds items
    assert not any(held_out("grit", k, 0.0) for k in keys)


def test_turns_and_chains_of_one_session_share_their_item():
    assert item_key("magicbrush", "100000#1", {"img_id": 100000}) == "100000"
    assert item_key("magicbrush", "100000#chain", {"img_id": 100000}) == "100000"
    assert item_key("seed_data_edit", "abc#2") == "abc"
    assert item_key("grit", "123") == "123"


def test_few_shot_samples_go_where_all_their_items_go():
    keys = [str(i) for i in range(2000)]
    test_keys = [k for k in keys if held_out("grit", k, 0.3)]
    train_keys = [k for k in keys if not held_out("grit", k, 0.3)]
    ex = lambda k: {"id": "e", "source": "grit", "source_key": k}  # noqa: E731
    assert split_of(sample(test_keys[0], examples=[ex(test_keys[1])]), 0.3) == TEST
    assert split_of(sample(train_keys[0], examples=[ex(train_keys[1])]), 0.3) == TRAIN
    assert split_of(sample(test_keys[0], examples=[ex(train_keys[0])]), 0.3) is None
    ctx = Context()
    kept = list(HoldoutStep(0.3).run([sample(test_keys[0], examples=[ex(train_keys[0])]), sample(test_keys[2])], ctx))
    assert [s.split for s in kept] == [TEST]
    assert ctx.reject_counts == {"holdout_mixed": 1}


def test_a_build_with_holdout_keeps_every_source_item_in_one_split(tmp_path):
    """subject-driven from the embedded GRIT sample: each image gives several rows (one per entity, multi-entity
    rows); with --holdout all of an image's rows land in one split, test rows in test/, and the dataset validates
    and loads both splits with `datasets`."""
    import datasets
    import pyarrow.parquet as pq

    from x2i.cli.main import app
    from x2i.inspect.validate import validate
    from typer.testing import CliRunner

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--task", "subject-driven", "--limit", "60", "--holdout", "0.3",
                                      "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    keys = {split: {r["source_key"] for f in sorted((out / root).rglob("*.parquet"))
                    for r in pq.read_table(f, columns=["source_key"]).to_pylist()}
            for split, root in (("train", "data"), ("test", "test"))}
    assert keys["train"] and keys["test"] and not keys["train"] & keys["test"]
    assert all(held_out("grit", k, 0.3) for k in keys["test"])
    assert not any(held_out("grit", k, 0.3) for k in keys["train"])
    report = validate(out)
    assert report.ok, report.summary()
    ds = datasets.load_dataset("parquet", data_files={"train": str(out / "data/**/*.parquet"),
                                                      "test": str(out / "test/**/*.parquet")})
    assert ds["test"].num_rows > 0 and ds["train"].num_rows > ds["test"].num_rows


def test_a_holdout_is_published_as_the_test_split_of_each_config(tmp_path):
    import datasets
    from typer.testing import CliRunner

    from x2i.cli.main import app

    out, stage = tmp_path / "out", tmp_path / "stage"
    runner = CliRunner()
    assert runner.invoke(app, ["build", "--task", "subject-driven", "--limit", "40", "--holdout", "0.3",
                               "--out", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["publish", str(out), "--repo-id", "me/held", "--dry-run", "--stage", str(stage)])
    assert result.exit_code == 0, result.output
    cache = str(tmp_path / "hf-cache")
    test = datasets.load_dataset(str(stage), "subject_driven", split="test", cache_dir=cache)
    train = datasets.load_dataset(str(stage), "subject_driven", split="train", cache_dir=cache)
    assert test.num_rows > 0 and train.num_rows > 0
    assert not set(test["source_key"]) & set(train["source_key"])
