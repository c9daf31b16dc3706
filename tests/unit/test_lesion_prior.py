"""The MNI lesion frequency prior: rebuilt from masks, symmetric, with leave-one-out quantiles."""

import nibabel as nib
import numpy as np
import pytest

from msimaging.lesion_prior import QUANTILES, build, grid_affine


def _mask(path, centre_mm):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-40.0, -60.0, -20.0)
    data = np.zeros((80, 80, 60), np.uint8)
    idx = np.round(np.subtract(centre_mm, aff[:3, 3])).astype(int)
    data[idx[0] - 2:idx[0] + 3, idx[1] - 2:idx[1] + 3, idx[2] - 2:idx[2] + 3] = 1
    nib.save(nib.Nifti1Image(data, aff), str(path))


def test_build_gives_a_symmetric_frequency_map_and_leave_one_out_quantiles(tmp_path):
    for i, c in enumerate([(20, -30, 10), (22, -30, 10), (-20, -28, 12)]):
        _mask(tmp_path / f"p{i:02d}_space-MNI152_label-lesion_mask.nii.gz", c)
    out = tmp_path / "prior.npz"
    q = build(tmp_path, out, smooth_mm=4.0)
    z = np.load(out)
    freq = z["frequency"].astype(float) / float(z["scale"])
    assert np.allclose(z["affine"], grid_affine())
    assert np.allclose(freq, freq[::-1], atol=2.0 / float(z["scale"]))   # mirror about x = 0
    i, j, k = np.unravel_index(np.argmax(freq), freq.shape)
    assert abs(abs(-98 + 2 * i) - 20) <= 4 and abs(-134 + 2 * j + 30) <= 4
    assert len(q) == len(QUANTILES) and all(v > 0 for v in q.values())
    assert list(q.values()) == sorted(q.values())
    assert int(z["loo_lesions"]) == 3
    with pytest.raises(FileNotFoundError):
        build(tmp_path / "empty", tmp_path / "x.npz")
