"""The command line refuses a dataset with one class: one line on stderr, exit status 2."""

from pathlib import Path

from PIL import Image

from cnnvit.cli import main


def test_a_one_class_folder_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "cats"
    (data / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i, i, i)).save(data / "cat" / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", "--data", f"folder:{data}", "--model", "resnet_mini", "--epochs", "1"]
    assert main([*args, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnnvit train: error: ")
    assert f"folder:{data}" in err and "1 class ('cat')" in err and "at least 2" in err
    assert not out.exists()  # nothing trained, no run folder left behind
