"""A damaged checkpoint pointer or file never wipes a run (issue 13, items 2 and 3): resume
finds the newest checkpoint that reads back whole, or stops with one line and deletes nothing."""

from pathlib import Path

import pytest

from cnnvit.config import load_run_config
from cnnvit.folders import RunFolder, RunFolderError
from cnnvit.train.checkpoint import load_checkpoint
from cnnvit.train.run import resume, train


def _cfg(out: Path):
    return load_run_config(
        None,
        [
            "data.spec=synthetic:train_size=600,val_size=200,image_size=16",
            f"output.dir={out}",
            "train.epochs=2",
            "train.batch_size=64",
            "train.progress=false",
        ],
    )


def _epochs(run: Path) -> list[str]:
    return (run / "epochs.csv").read_text().splitlines()


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert train(_cfg(out))["status"] == "completed"
    return out


@pytest.fixture
def cut(tmp_path, interrupt_in_second_epoch) -> Path:
    out = tmp_path / "cut"
    interrupt_in_second_epoch(lambda: train(_cfg(out)))
    assert load_checkpoint(out).epoch == 1
    return out


@pytest.mark.parametrize(
    "pointer",
    ['{"epoch": 7, "path": "epoch-0007"}', "{not json", '{"epoch": "x", "path": 3}'],
)
def test_a_bad_pointer_resumes_from_the_checkpoint_that_is_there(whole, cut, pointer):
    (cut / "checkpoints" / "latest.json").write_text(pointer)
    assert RunFolder(cut).latest_checkpoint().path.name == "epoch-0001"
    assert resume(cut)["status"] == "completed"
    strip = lambda rows: [",".join(r.split(",")[:6]) for r in rows]  # noqa: E731 (no timings)
    assert strip(_epochs(cut)) == strip(_epochs(whole))


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt"])
def test_a_truncated_checkpoint_stops_with_one_line_and_deletes_nothing(cut, damaged):
    target = cut / "checkpoints" / "epoch-0001" / damaged
    target.write_bytes(target.read_bytes()[:100])
    log = _epochs(cut)
    with pytest.raises(RunFolderError, match=r"no checkpoint reads back whole \(epoch-0001: "):
        resume(cut)
    assert target.stat().st_size == 100 and _epochs(cut) == log
