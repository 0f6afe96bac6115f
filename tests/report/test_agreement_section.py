"""The report's agreement section: pairs of models per seed, the verdict from McNemar's test."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml

from cnnvit.evaluate.agreement import compare_predictions
from cnnvit.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _section(page: str) -> str:
    start = page.index('<section id="agreement">')
    return page[start : page.index("</section>", start)]


def _clear_winner(model: str, fraction: float, seed: int) -> float:
    return 0.95 if model.startswith("resnet") else 0.70


def test_the_section_states_the_tests_verdict_and_matches_the_run_files(tmp_path, study_factory):
    root = study_factory(tmp_path / "s", accuracy=_clear_winner, seeds=[0, 1])
    section = _section(write_report(root).read_text())
    assert "McNemar&#x27;s exact test says resnet_mini better at α=0.05 in 2 of 2 seeds" in section
    assert section.count("<img") == 1
    assert (root / "figures" / "disagreements.png").read_bytes().startswith(PNG)

    table = pd.read_csv(root / "tables" / "agreement.csv")
    assert list(table["seed"]) == [0, 1]
    assert set(table["fraction"]) == {0.25}  # the largest size only
    assert (table["model_a"] == "resnet_mini").all() and table["head_to_head"].all()
    counts = table[["both_right", "only_a", "only_b", "both_wrong"]].sum(axis=1)
    assert (counts == table["num_images"]).all() and (table["num_images"] == 300).all()
    for row in table.itertuples():
        runs = root / "runs"
        a = pd.read_parquet(runs / row.cell_a / "predictions.parquet")
        b = pd.read_parquet(runs / row.cell_b / "predictions.parquet")
        want = compare_predictions(a, b, ["T-shirt/top", "Trouser", "Bag"])
        assert (row.only_a, row.only_b) == (want.only_a, want.only_b)
        assert row.mcnemar_p == pytest.approx(want.mcnemar_p)
        assert row.ci_low == pytest.approx(want.difference_ci[0])
        assert row.verdict == "resnet_mini better at α=0.05"


def test_equal_models_are_indistinguishable(tmp_path, study_factory):
    root = study_factory(tmp_path / "s", accuracy=lambda m, f, s: 0.8, seeds=[0, 1, 2])
    section = _section(write_report(root).read_text())
    table = pd.read_csv(root / "tables" / "agreement.csv")
    # Equal accuracy: as many images only A gets right as only B, whatever the seed.
    assert (table["only_a"] == table["only_b"]).all() and (table["mcnemar_p"] == 1.0).all()
    assert "says indistinguishable at α=0.05 in 3 of 3 seeds" in section


def test_every_pair_with_the_head_to_head_pair_first(tmp_path, study_factory):
    # families as the runs recorded them: resnet_mini and resnet18_cifar cnn, vit_mini vit
    models = [("small", "resnet_mini"), ("big", "resnet18_cifar"), ("vit", "vit_mini")]

    def accuracy(model: str, fraction: float, seed: int) -> float:
        return {"small": 0.7, "big": 0.9, "vit": 0.8}[model]

    root = study_factory(tmp_path / "s", models=models, accuracy=accuracy, seeds=[0, 1])
    write_report(root)
    table = pd.read_csv(root / "tables" / "agreement.csv")
    pairs = list(dict.fromkeys(zip(table["model_a"], table["model_b"], strict=True)))
    assert pairs == [("big", "vit"), ("small", "big"), ("small", "vit")]
    assert table["head_to_head"].tolist() == [True, True, False, False, False, False]


def test_without_the_saved_test_images_the_table_stays(tmp_path, study_factory):
    root = study_factory(tmp_path / "s", seeds=[0])
    shutil.rmtree(root / "agreement")  # a study whose images were never saved
    for config in (root / "runs").glob("*/config.yaml"):  # and whose data is gone: not read
        config.write_text(yaml.safe_dump({"data": {"spec": f"folder:{tmp_path / 'gone'}"}}))
    section = _section(write_report(root).read_text())
    assert "the study has not saved the images where" in section and "agreement" in section
    assert "<img" not in section
    assert not (root / "figures" / "disagreements.png").exists()
    assert len(pd.read_csv(root / "tables" / "agreement.csv")) == 1


def test_predictions_of_different_images_are_reported_not_compared(tmp_path, study_factory):
    root = study_factory(tmp_path / "s", seeds=[0, 1])
    path = root / "runs" / "vit_mini-f0.25-s1" / "predictions.parquet"
    frame = pd.read_parquet(path)
    frame.iloc[:-1].to_parquet(path)
    section = _section(write_report(root).read_text())
    table = pd.read_csv(root / "tables" / "agreement.csv")
    assert table["problem"].isna().tolist() == [True, False]
    assert "do not hold the same images" in table["problem"].iloc[1]
    assert "do not hold the same images" in section
    assert re.search(r"in 1 of 1 seed\b", section)


def test_a_single_model_or_no_predictions(tmp_path, study_factory):
    one = study_factory(tmp_path / "one", models=[("resnet_mini", "resnet_mini")], seeds=[0])
    assert "a single model" in _section(write_report(one).read_text())
    none = study_factory(tmp_path / "none", seeds=[0])
    for path in (none / "runs").glob("*/predictions.parquet"):
        path.unlink()
    section = _section(write_report(none).read_text())
    assert "nothing to compare yet" in section
    assert pd.read_csv(none / "tables" / "agreement.csv").empty
