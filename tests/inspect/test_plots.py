"""The QA figures (shown by the notebooks, written by `x2i stats --plot`) show the dataset's numbers."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from x2i.inspect import plots
from x2i.cli.main import app
from x2i.inspect.stats import collect, rejects_of


def test_bar_charts_and_histograms_hold_the_counts(mixed_dataset):
    cols = collect(mixed_dataset)
    counts = Counter(cols["task"])
    ax = plots.rows_per_task(cols).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert dict(zip(labels, [p.get_width() for p in ax.patches])) == counts
    ax = plots.rejects_per_reason(rejects_of(mixed_dataset)).axes[0]
    assert dict(zip([t.get_text() for t in ax.get_yticklabels()], [p.get_width() for p in ax.patches])) == {
        "too_small": 2, "no_entity": 1}
    fig = plots.score_histograms(cols)
    for ax, key in zip(fig.axes, ("aesthetic", "clip_score")):
        present = [v for v in cols[key] if v is not None]
        assert sum(p.get_height() for p in ax.patches) == len(present)
        assert f"null {len(cols[key]) - len(present)}" in ax.get_title()
    ax_sizes, ax_aspect, ax_side = plots.size_distributions(cols).axes
    assert sum(p.get_height() for p in ax_aspect.patches) == len(cols["task"])
    assert sum(p.get_height() for p in ax_side.patches) == len(cols["task"])


def test_sample_grid_shows_every_input_and_the_output(mixed_dataset):
    fig = plots.sample_grid(mixed_dataset, "few_shot/image_edit", n=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("input [3]") == 2 and sum(t.startswith("output") for t in titles) == 2
    assert all(ax.images for ax in fig.axes)  # every panel holds a decoded image


def test_condition_pairs_put_image_and_condition_in_their_columns(mixed_dataset):
    rows = plots.task_rows(mixed_dataset, "control/canny", 1)
    fig = plots.condition_pairs(mixed_dataset, "control/canny", n=1)
    image, condition, overlay = (ax.images[0].get_array() for ax in fig.axes)
    # control/...: the condition is the input, the image is the output
    assert np.array_equal(image, plots._thumb(rows[0]["output_image"]))
    assert np.array_equal(condition, plots._thumb(rows[0]["input_images"][0]))
    assert np.array_equal(overlay, ((image.astype(float) + condition.astype(float)) / 2).astype(np.uint8))
    rows = plots.task_rows(mixed_dataset, "vision/canny", 1)
    image, condition, _ = (ax.images[0].get_array() for ax in plots.condition_pairs(mixed_dataset, "vision/canny", 1).axes)
    assert np.array_equal(image, plots._thumb(rows[0]["input_images"][0]))
    assert np.array_equal(condition, plots._thumb(rows[0]["output_image"]))


def test_stats_plot_writes_the_figures(mixed_dataset, tmp_path):
    result = CliRunner().invoke(app, ["stats", str(mixed_dataset), "--json", "--plot", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)  # --json stays parseable: the "wrote ..." line goes to stderr
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    slugs = sorted(f"samples-{t.replace('/', '__')}.png" for t in stats["tasks"])
    assert names == sorted(["rows_per_task.png", "rejects_per_reason.png", "scores.png", "sizes.png", *slugs])
    for name in names:
        with Image.open(tmp_path / "figs" / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
