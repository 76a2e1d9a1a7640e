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
