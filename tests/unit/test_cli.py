"""Command-line behaviour that needs no pipeline run: usage errors exit 2 with readable lines."""

import numpy as np

from msimaging.cli import main


def test_unknown_bids_dir_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "BIDS directory not found" in capsys.readouterr().err


def test_bad_config_override_exits_2(tmp_path, capsys):
    (tmp_path / "bids" / "sub-a" / "anat").mkdir(parents=True)
    assert main(["run", str(tmp_path / "bids"), str(tmp_path / "out"), "--config", "lesions.min_voxels=0"]) == 2
    assert "lesions.min_voxels" in capsys.readouterr().err


def test_evaluate_prints_figures(make_nifti, capsys):
    m = np.zeros((20, 20, 20), np.uint8)
    m[5:9, 5:9, 5:9] = 1
    p = make_nifti(m)
    assert main(["evaluate", str(p), str(p)]) == 0
    out = capsys.readouterr().out
    assert "dice" in out and "1.0000" in out


def test_evaluate_missing_file_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) == 2


def test_arguments_after_double_dash_only_for_run(capsys):
    assert main(["validate", "x", "--", "--forceall"]) == 2
