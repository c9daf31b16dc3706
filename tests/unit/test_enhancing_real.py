"""Gd+ detection on sub-p07's real post-contrast scan: implanted lesions found, mimics rejected.

sub-p07's real T1w, ce-T1w, T2w and FLAIR, prepared by the pipeline (``bench.realdata.prepared_run``,
cached under bench-work/tests-gd), receive, in one case:

* enhancing lesions of real lesion shapes, one per size bin of ``msimaging.implant_enhancing``
  (nodular or ring, real-lesion FLAIR/T2w/T1w contrast), among the scan's real vessels;
* a vessel-like bright tube in deep white matter (ce-T1w +90 % over NAWM, 2.4 mm wide, 24 mm
  long; FLAIR, T2w and T1w unchanged, as a vein's are);
* a choroid-plexus-like bright spot in a lateral ventricle (ce-T1w +100 %, pre-contrast T1w at
  tissue level, FLAIR +30 % and T2w +60 %: as lesion-like as a glomus can look).

The detection is the detect_enhancing rule's (:func:`msimaging.enhancing.detect_session`, with the
T2 lesion mask of :func:`msimaging.segment.segment_lesions`, both on template priors). The figures
asserted are those measured when this test was written (``bench activity``'s real Gd+ section
measures the same method on ten cases of 12 lesions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
P07 = SHARED / "ms-crosssectional"
MASKS = SHARED / "ms-lesion-masks"

pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(not (P07.is_dir() and MASKS.is_dir()), reason="../shared/data absent")]


@pytest.fixture(scope="module")
def background():  # type: ignore[no-untyped-def]
    from msimaging import io
    from msimaging.config import default_config
    from msimaging.geometry import Grid
    from msimaging.implant import local_nawm
    from msimaging.segment import SegmentOptions, tissue_evidence, tissue_priors

    from msimaging.bench.realdata import load_session, prepared_run

    # the pipeline's own preparation (N4, brain mask, co-registration, template registration; cached)
    sess = load_session(prepared_run(P07, REPO / "bench-work" / "tests-gd"), "p07", "01")
    images, affine, brain, xfm = sess.images, sess.affine, sess.brain, sess.template_xfm
    expert, _ = io.read_mask(P07 / "derivatives" / "reference" / "sub-p07" / "ses-01"
                             / "sub-p07_ses-01_label-lesion_mask.nii.gz")
    priors = tissue_priors(Grid(tuple(brain.shape), affine), xfm)
    cfg = default_config()
    ev = tissue_evidence({c: images[c] for c in ("FLAIR", "T2w", "T1w")}, affine, brain, priors,
                         SegmentOptions.from_config(cfg))
    wm = np.where(ndi.binary_dilation(expert > 0, iterations=2), 0.0, ev.post[..., 2] * brain).astype(np.float32)
    admissible = ((1.0 - ev.post[..., 0]) * brain).astype(np.float32)
    nawm = {c: local_nawm(images[c], wm, affine) for c in images}
    return dict(images=images, affine=affine, brain=brain, xfm=xfm, expert=expert > 0, priors=priors,
                wm=wm, admissible=admissible, nawm=nawm, cfg=cfg)


def _detect(bg, images):  # type: ignore[no-untyped-def]
    from msimaging.enhancing import detect_session
    from msimaging.lesions import rules_from_config
    from msimaging.segment import SegmentOptions, segment_lesions

    cfg = bg["cfg"]
    seg = segment_lesions({c: images[c] for c in ("FLAIR", "T2w", "T1w")}, bg["affine"], bg["brain"], bg["priors"],
                          SegmentOptions.from_config(cfg), rules_from_config(cfg))
    return detect_session(images["ceT1w"], images["T1w"], bg["affine"], bg["brain"], cfg,
                          t2_lesions=seg.labels > 0, flair=images["FLAIR"], t2w=images["T2w"],
                          template_xfm=bg["xfm"])


def _ball(shape, centre, radius):  # type: ignore[no-untyped-def]
    ijk = np.indices(shape, sparse=True)
    return sum((g - c) ** 2 for g, c in zip(ijk, centre)) <= radius ** 2


@pytest.fixture(scope="module")
def mimic_case(background):  # type: ignore[no-untyped-def]
    from msimaging.implant import bundled_profile, mask_files
    from msimaging.implant_enhancing import implant_enhancing, placement
    from msimaging.morphology import dilate_mm
    from msimaging.segment import distance_to_surface_mm

    bg = background
    affine, brain = bg["affine"], bg["brain"]
    placed = placement(bg["wm"] > 0.5, affine, bg["expert"], mask_files(MASKS), 1, 0, (brain, affine))
    case = implant_enhancing(bg["images"], affine, brain, bg["wm"], bg["admissible"], placed.mask, placed.affine,
                             bundled_profile(), 0, nawm=bg["nawm"])
    images = {c: v.copy() for c, v in case.images.items()}
    depth = distance_to_surface_mm(brain, affine)
    taken = dilate_mm(bg["expert"] | (case.truth > 0), 8.0, affine)
    # a vein in deep white matter, along the anterior-posterior axis
    ok = (bg["priors"].wm > 0.9) & (depth > 20) & ~taken
    pts = np.argwhere(ok)
    i, j, k = pts[len(pts) // 2]
    yy = np.arange(brain.shape[1])[None, :, None]
    ii = np.arange(brain.shape[0])[:, None, None]
    kk = np.arange(brain.shape[2])[None, None, :]
    tube = ((ii - i) ** 2 + (kk - k) ** 2 <= 1.2 ** 2) & (np.abs(yy - j) <= 12) & brain
    images["ceT1w"] = np.where(tube, images["ceT1w"] + 0.9 * bg["nawm"]["ceT1w"], images["ceT1w"])
    # a choroid-plexus-like spot in the middle of a lateral ventricle
    csf = (bg["priors"].csf > 0.8) & (bg["images"]["T1w"] < 0.5) & brain & (depth > 20)
    inside = ndi.distance_transform_edt(csf)
    centre = np.unravel_index(int(np.argmax(inside)), csf.shape)
    chor = _ball(brain.shape, centre, 3.0) & brain
    n = bg["nawm"]
    images["T1w"] = np.where(chor, 0.85 * n["T1w"], images["T1w"])
    images["ceT1w"] = np.where(chor, 0.85 * n["ceT1w"] + 1.0 * n["ceT1w"], images["ceT1w"])
    images["FLAIR"] = np.where(chor, 1.3 * n["FLAIR"], images["FLAIR"])
    images["T2w"] = np.where(chor, 1.6 * n["T2w"], images["T2w"])
    found = _detect(bg, images)
    from msimaging.enhancing import enhancement_zscore

    tissue = brain & (images["T1w"] > 0.55 * float(np.median(images["T1w"][brain])))
    z = enhancement_zscore(images["ceT1w"], images["T1w"], tissue)
    return case, tube, chor, found, z


def test_implanted_enhancing_lesions_are_found(mimic_case):  # type: ignore[no-untyped-def]
    case, _, _, found, _ = mimic_case
    hits = {les["label"]: bool((found.labels[case.truth == les["label"]] > 0).any()) for les in case.lesions}
    assert len(case.lesions) == 4
    # the sub-p07 preparation is not bit-reproducible and the faintest small lesions are found on
    # some preparations only (the bench's 10-20 mm^3 recall is 0.63-0.67 over 30 such lesions):
    # measured on three fresh preparations, every lesion of at least 20 mm^3 and +20 % enhancement
    # was found, and at least 3 of the 4 in all (the last one missed the 12 mm^3 nodular one at +22 %, never
    # seeded, and found the 102 mm^3 ring at +16 %)
    assert all(hits[les["label"]] for les in case.lesions
               if les["enhancement"] >= 0.2 and les["volume_mm3_1mm"] >= 20)
    assert sum(hits.values()) >= 3


def test_a_vessel_like_tube_is_rejected(mimic_case):  # type: ignore[no-untyped-def]
    _, tube, _, found, z = mimic_case
    assert tube.sum() > 100
    assert np.median(z[tube]) > 10          # it enhances far above the seed threshold ...
    assert not (found.labels[ndi.binary_dilation(tube, iterations=1)] > 0).any()   # ... and is not counted


def test_a_choroid_plexus_like_spot_in_a_ventricle_is_rejected(mimic_case):  # type: ignore[no-untyped-def]
    _, _, chor, found, z = mimic_case
    assert chor.sum() > 80
    assert np.median(z[chor]) > 10
    # a candidate (bright on FLAIR too, at tissue level on T1w), rejected on its evidence
    assert found.candidate_labels is not None and (found.candidate_labels[chor] > 0).mean() > 0.5
    assert not (found.labels[ndi.binary_dilation(chor, iterations=1)] > 0).any()


def test_gd_lesions_outside_the_implants_lie_in_t2_lesions(background, mimic_case):  # type: ignore[no-untyped-def]
    """The scan's own enhancing structures: what is counted besides the implanted lesions lies in
    the expert T2 mask (an enhancing lesion is a T2 lesion); bench activity: 1 on the un-implanted
    scan, 1.0 per implanted scan: that one structure (the detector before this method: 51 of 52 outside)."""
    case, _, _, found, _ = mimic_case
    near = ndi.binary_dilation(background["expert"], iterations=2, structure=np.ones((3, 3, 3)))
    outside = [k for k in range(1, found.labels.max() + 1)
               if not (case.truth[found.labels == k] > 0).any() and not (near & (found.labels == k)).any()]
    assert len(found.candidates) > 100          # hundreds of enhancing candidates ...
    assert len(outside) <= 1                    # ... and at most one counted outside every T2 lesion
