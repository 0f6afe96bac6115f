"""write_report: every output file, a safe self-contained page, identical bytes on rebuild."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest
from rich.console import Console

from cnnvit.report import print_summary, write_report
from cnnvit.report.collect import load_study_data
from cnnvit.report.sections import report_sections

# A study without analyses: every section but the analyses', plus the list of those not run.
SHOWN_WITHOUT_ANALYSES = [
    s for s in report_sections() if s.shown is None or s.id == "analyses-not-run"
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
FIGURES = [
    "accuracy_vs_images",
    "learning_curves",
    "reliability",
    "confusion_matrices",
    "disagreements",
]
TABLES = [
    "accuracy",
    "learning_curve_fit",
    "budget",
    "calibration",
    "efficiency",
    "final_metrics",
    "agreement",
    "cells",
]
# src=/href= (or CSS url()) pointing anywhere but inside the page.
EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def built(tmp_path_factory, study_factory):
    """A study with a failed, a diverged and a missing cell, and hostile names; built once."""
    root = tmp_path_factory.mktemp("built") / "study"
    study_factory(
        root,
        models=[("resnet_mini", "resnet_mini"), (EVIL, "vit_mini")],
        classes=["T-shirt/top", "Trouser", EVIL],
        statuses={
            "resnet_mini-f0.02-s1": "failed",
            "resnet_mini-f0.07-s2": "diverged",
            "resnet_mini-f0.25-s0": "missing",
        },
        command=f"cnnvit compare --out 'study' --set name={EVIL}",
    )
    return root, write_report(root)


def test_every_output_is_written(built):
    root, report = built
    assert report == root / "report.html"
    for name in ("results.csv", "results.parquet", "summary.csv", "report.html"):
        assert (root / name).stat().st_size > 0, name
    for name in TABLES:
        assert not pd.read_csv(root / "tables" / f"{name}.csv").empty, name
    for name in FIGURES:
        png = (root / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000, name
    results = pd.read_parquet(root / "results.parquet")
    assert list(results.columns) == list(pd.read_csv(root / "results.csv").columns)
    assert len(results) == 18


def test_page_has_every_section_and_no_external_resource(built):
    _, report = built
    page = report.read_text()
    for section in SHOWN_WITHOUT_ANALYSES:
        assert f'<section id="{section.id}">' in page, section.id
    assert not EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)


def test_text_from_the_data_is_escaped(built):
    _, report = built
    page = report.read_text()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;tried&lt;/b&gt;" in page  # the failed cell's error message
    assert "<b>tried" not in page


def test_failed_and_diverged_cells_are_reported(built):
    _, report = built
    page = report.read_text()
    cells = page[page.index('<section id="cells">') :]
    assert "status-failed" in cells and "status-diverged" in cells and "status-missing" in cells
    assert "out of memory" in cells and "loss is nan at epoch 2" in cells
    assert "18 cells: 15 completed, 1 diverged, 1 failed, 1 missing." in cells
    verdict = page[page.index('<section id="verdict">') : page.index('<section id="accuracy">')]
    # resnet_mini's seed 2 diverged at 3,360 images: the two are paired over seeds 0 and 1.
    at = verdict[verdict.index("At 3,360 training images") :].split("</li>")[0]
    assert "too few seeds to tell" in at and "(95 % interval over 2 seeds" in at


def test_rebuild_gives_identical_bytes(built):
    root, report = built
    first = report.read_bytes()
    figures = {n: (root / "figures" / f"{n}.png").read_bytes() for n in FIGURES}
    tables = {n: (root / "tables" / f"{n}.csv").read_bytes() for n in TABLES}
    report.unlink()
    assert write_report(root).read_bytes() == first
    assert {n: (root / "figures" / f"{n}.png").read_bytes() for n in FIGURES} == figures
    assert {n: (root / "tables" / f"{n}.csv").read_bytes() for n in TABLES} == tables


def test_only_one_model_finished(tmp_path, study_factory):
    cells = [f"vit_mini-f{f:g}-s{s}" for f in (0.02, 0.07, 0.25) for s in (0, 1, 2)]
    root = study_factory(tmp_path / "s", statuses=dict.fromkeys(cells, "failed"))
    page = write_report(root).read_text()
    assert "Only resnet_mini has completed runs" in page
    assert "No confusion matrix for vit_mini" in page
    for section in SHOWN_WITHOUT_ANALYSES:
        assert f'<section id="{section.id}">' in page


def test_nothing_completed(tmp_path, study_factory):
    root = study_factory(
        tmp_path / "s",
        fractions=[0.5],
        seeds=[0],
        statuses={"resnet_mini-f0.5-s0": "failed", "vit_mini-f0.5-s0": "missing"},
    )
    page = write_report(root).read_text()
    assert "nothing to compare yet" in page
    assert "<img" not in page
    assert not list((root / "figures").glob("*.png"))
    assert pd.read_csv(root / "results.csv")["status"].tolist() == ["failed", "missing"]


def test_several_depths_get_a_panel_each(tmp_path, study_factory):
    root = study_factory(tmp_path / "s", trainable_blocks=[None, 2], seeds=[0, 1])
    page = write_report(root).read_text()
    assert "With all layers trainable:" in page
    assert "With the last 2 blocks trainable:" in page
    assert (root / "figures" / "accuracy_vs_images.png").stat().st_size > 0


def test_print_summary(built):
    root, report = built
    console = Console(record=True, width=140)
    print_summary(root, console)
    text = console.export_text()
    assert "resnet_mini" in text and EVIL in text
    assert "12,000" in text and "±" in text
    assert "2/3" in text  # the failed cell counts as planned, not as done
    assert "3 of 18 cells did not complete" in text
    # The head-to-head per size: the mean paired difference over the seeds both completed.
    results = pd.read_csv(root / "results.csv")
    done = results[results["status"] == "completed"].set_index(["model", "fraction", "seed"])
    done = done.sort_index()
    a, b = done.loc["resnet_mini", "test_top1"], done.loc[EVIL, "test_top1"]
    gap = (a - b).dropna().groupby(level="fraction").mean()
    assert f"Head to head: resnet_mini − {EVIL}" in text.replace("\n", " ")
    for fraction, images in ((0.02, "960"), (0.07, "3,360")):
        row = next(line for line in text.splitlines() if line.startswith(f"│ {images:>6} │"))
        assert f"{100 * gap[fraction]:+.1f} pts" in row and "too few seeds" in row
    assert str(report) in text.replace("\n", "")


def test_three_models_take_their_families_from_the_run_folders(tmp_path, study_factory):
    # The labels say nothing about the family; results.json does (resnet* -> cnn, vit* -> vit).
    models = [("Big CNN", "resnet18_cifar"), ("Small CNN", "resnet_mini"), ("ViT", "vit_mini")]
    root = study_factory(tmp_path / "s", models=models)
    assert load_study_data(root).families == {"Big CNN": "cnn", "Small CNN": "cnn", "ViT": "vit"}
    page = write_report(root).read_text()
    assert "Ranking at 960 training images (test top-1, mean over seeds):" in page
    assert "Head to head, " in page and " against ViT:" in page


def test_the_report_is_built_without_torch(tmp_path, study_factory):
    # The report reads files only: building one (and the terminal summary) imports no torch.
    root = study_factory(tmp_path / "s", seeds=[0])
    code = (
        "import sys\n"
        "from rich.console import Console\n"
        "from cnnvit.report import print_summary, write_report\n"
        f"write_report({str(root)!r})\n"
        f"print_summary({str(root)!r}, Console(file=open('/dev/null', 'w')))\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "data:image/png;base64," in (root / "report.html").read_text()
