"""The voxel lesion classifier (msimaging.lesion_model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_lesion_model_quadratic_form_equals_the_fitted_regression() -> None:
    """The fast logit (standardisation folded into c + x.b + x.U.x) equals the fitted model's."""
    from msimaging.lesion_model import fit_logistic, quadratic

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 4))
    y = (x[:, 0] * x[:, 1] + 0.5 * x[:, 2] + 0.3 * rng.standard_normal(3000) > 0.2).astype(float)
    m = fit_logistic(x, y, np.ones(len(y)), ("FLAIR",), l2=0.1)
    q = (quadratic(x) - m.mean) / m.scale
    assert np.allclose(m.logit(x), q @ m.weights, atol=1e-8)
    acc = float(((m.predict(x) >= 0.5) == (y > 0)).mean())
    assert acc > 0.9            # an interaction (x0 * x1) is learnt: linear features could not


def test_component_training_scores_what_the_segmentation_outputs() -> None:
    """A kept candidate left with no voxel at the chosen odds is no lesion: it neither counts as a
    prediction nor detects the truth lesion it overlapped only below those odds. Precision counts the
    lesions of the final mask: a candidate the cut splits in two is two predictions."""
    from msimaging.bench.lesion_training import case_score

    # candidate 1 covers truth lesion 1 at both odds; candidate 2 covers truth lesion 2 only at
    # odds 0.35 (at odds 1.0 it keeps no voxel)
    c = {"skip": np.zeros(2, bool), "y": np.ones(2), "truth_voxels": 20, "truth_lesions": 2,
         "odds": {0.35: (np.array([10.0, 10.0]), np.array([10.0, 10.0])),
                  1.0: (np.array([10.0, 0.0]), np.array([10.0, 0.0]))},
         "lesions": {0.35: (np.array([1.0, 1.0]), np.array([1.0, 1.0])),
                     1.0: (np.array([1.0, 0.0]), np.array([1.0, 0.0]))},
         "pairs": {0.35: np.array([[1, 1], [2, 2]]), 1.0: np.array([[1, 1]])}}
    keep = np.array([True, True])
    assert case_score(c, keep, 0.35) == 1.0                 # Dice 1, F1 1
    # at odds 1.0: Dice 2*10/(10+20) = 0.667; P 1/1, R 1/2 -> F1 0.667
    assert abs(case_score(c, keep, 1.0) - 2 / 3) < 1e-9
    # candidate 2 ends as two final lesions, one of them off the truth: P 2/3, R 1 -> F1 0.8
    c["lesions"][0.35] = (np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    assert abs(case_score(c, keep, 0.35) - (1.0 + 0.8) / 2) < 1e-9


def test_component_training_sees_the_final_mask_of_each_candidate() -> None:
    """The voxels, lesions and truth pairs of each candidate are those the pipeline outputs: above
    the odds, less the half-maximum cut and the lesion rules (too small a remnant is no lesion)."""
    from scipy import ndimage as ndi

    from msimaging.bench import lesion_training as LT
    from msimaging.lesions import LesionRules, label_lesions
    from msimaging.segment import SegmentOptions

    shape = (30, 30, 30)
    aff = np.eye(4)
    truth = np.zeros(shape, bool)
    truth[5:9, 5:9, 5:9] = True            # 64 voxels
    truth[20:23, 20:23, 20:23] = True      # 27 voxels
    logit = np.full(shape, -5.0, np.float32)
    logit[4:10, 4:10, 4:10] = 1.0          # candidate 1 at odds <= e^1, truth lesion 1 and a rim
    logit[20:23, 20:23, 20:23] = -1.0      # candidate 2 only below odds e^-1 (0.37)
    logit[20, 20, 20] = 1.0                # ... of which 1 voxel survives higher odds: below the rules
    labels, n = ndi.label(logit >= np.log(0.2), np.ones((3, 3, 3), bool))
    stats = LT.final_lesion_stats(labels, logit, truth, label_lesions(truth, aff), aff, (0.3, 0.6), SegmentOptions(model_half_max=0.0),
                                  LesionRules(min_volume_mm3=10.0, min_voxels=3),
                                  np.ones(shape, np.float32), np.ones(shape, np.float32))
    assert n == 2
    c1, c2 = int(labels[6, 6, 6]) - 1, int(labels[21, 21, 21]) - 1
    assert stats["odds"][0.3][0][[c1, c2]].tolist() == [216.0, 27.0]
    assert stats["odds"][0.6][0][[c1, c2]].tolist() == [216.0, 0.0]      # the 1-voxel remnant is dropped
    assert stats["lesions"][0.6][0][[c1, c2]].tolist() == [1.0, 0.0]
    assert sorted(map(tuple, stats["pairs"][0.3].tolist())) == sorted([(1, c1 + 1), (2, c2 + 1)])
    assert sorted(map(tuple, stats["pairs"][0.6].tolist())) == [(1, c1 + 1)]
    # the lowest odds tried keeps every voxel of a candidate (what lies below is no candidate)
    from msimaging.lesion_model import CANDIDATE_ODDS
    assert LT.VOXEL_ODDS[0] == CANDIDATE_ODDS


def _synthetic(n: int, names: list[str], rng: np.random.Generator) -> np.ndarray:
    """Random base features: posteriors and priors on the simplex, the rest roughly in range."""
    x = rng.normal(0.1, 0.4, (n, len(names)))
    for group in (("post_csf", "post_gm", "post_wm"), ("prior_csf", "prior_gm", "prior_wm")):
        p = rng.dirichlet(np.ones(3), n)
        for j, g in enumerate(group):
            x[:, names.index(g)] = p[:, j]
    x[:, names.index("depth")] = rng.uniform(0, 2, n)
    return np.clip(x, -4, 4)


def test_monotone_model_never_scores_a_brighter_voxel_lower() -> None:
    """Raising any hyperintensity feature (FLAIR / T2w excess raw, smoothed or peak, z_gm) never
    lowers the logit, on random inputs; the model still learns bright *and* white matter."""
    import json

    from msimaging.lesion_model import feature_names, fit_monotone, is_monotone_feature, model_from_json

    rng = np.random.default_rng(1)
    cs = ("FLAIR", "T2w", "T1w")
    names = feature_names(cs)
    x = _synthetic(6000, names, rng)
    f, wm, t1 = (x[:, names.index(k)] for k in ("FLAIR_excess_s1", "post_wm", "T1w_excess_s1"))
    # lesion: bright in white matter, or bright and T1w-dark; non-monotone noise in the labels
    # (very bright voxels often negative) must not make the model non-monotone
    y = ((f > 0.3) & ((wm > 0.4) | (t1 < -0.2))).astype(float)
    y[(f > 0.9) & (rng.random(len(y)) < 0.7)] = 0.0
    m = fit_monotone(x, y, np.ones(len(y)), cs, names, l2=0.1, max_iter=200)
    m = model_from_json(json.loads(json.dumps(m.to_json())))          # as shipped
    assert float(((m.predict(x) >= 0.5) == (y > 0)).mean()) > 0.85
    probe = _synthetic(4000, names, rng)
    base = m.logit(probe)
    for j, name in enumerate(names):
        if not is_monotone_feature(name):
            continue
        brighter = probe.copy()
        brighter[:, j] = np.clip(brighter[:, j] + rng.uniform(0, 2, len(probe)), -4, 4)
        assert np.all(m.logit(brighter) >= base - 1e-9), name
    # every hyperintensity term is a non-decreasing piecewise-linear function
    for t in m.terms:
        if t["monotone"]:
            assert np.all(np.diff(t["y"]) >= 0)


def test_tree_model_learns_thresholds_and_interactions_and_is_flat_beyond_its_training_range() -> None:
    """Boosted oblivious trees: a logit of thresholds and interactions (bright *and* white matter,
    or bright *and* T1w-dark) is learnt far better than chance and better than the quadratic model
    can; the shipped JSON gives the same logit; a brighter voxel than any seen scores like the
    brightest seen (trees are constant beyond their last split)."""
    import json

    from msimaging.lesion_model import feature_names, fit_logistic, fit_trees, model_from_json

    rng = np.random.default_rng(3)
    cs = ("FLAIR", "T2w", "T1w")
    names = feature_names(cs)
    x = np.clip(_synthetic(8000, names, rng), -1.5, 1.5)
    f, wm, t1 = (x[:, names.index(k)] for k in ("FLAIR_excess_s1", "post_wm", "T1w_excess_s1"))
    y = ((f > 0.3) & ((wm > 0.6) | (t1 < -0.2))).astype(float)
    m = fit_trees(x, y, np.ones(len(y)), cs, names, trees=60, depth=4, learning_rate=0.3, seed=0)
    shipped = model_from_json(json.loads(json.dumps(m.to_json())))
    assert np.allclose(shipped.logit(x), m.logit(x), atol=1e-5)
    test = np.clip(_synthetic(4000, names, rng), -1.5, 1.5)
    ft, wt, tt = (test[:, names.index(k)] for k in ("FLAIR_excess_s1", "post_wm", "T1w_excess_s1"))
    yt = (ft > 0.3) & ((wt > 0.6) | (tt < -0.2))
    acc_trees = float(((shipped.predict(test) >= 0.5) == yt).mean())
    plain = [names.index(n) for n in feature_names(cs, context=False)]
    q = fit_logistic(x[:, plain], y, np.ones(len(y)), cs, l2=0.1)
    acc_quad = float(((q.predict(test[:, plain]) >= 0.5) == yt).mean())
    assert acc_trees > 0.95 and acc_trees > acc_quad + 0.02, (acc_trees, acc_quad)
    j = names.index("FLAIR_excess_s1")
    at_max, beyond = test.copy(), test.copy()
    at_max[:, j], beyond[:, j] = x[:, j].max(), 4.0
    assert np.array_equal(shipped.logit(at_max), shipped.logit(beyond))
    # deterministic for a seed
    again = fit_trees(x, y, np.ones(len(y)), cs, names, trees=60, depth=4, learning_rate=0.3, seed=0)
    assert np.array_equal(again.values, m.values) and np.array_equal(again.split_features, m.split_features)


def test_size_balanced_weights_give_every_lesion_the_same_total_at_alpha_one() -> None:
    from msimaging.bench.lesion_training import size_balanced

    # one 1000 mm^3 lesion (100 samples of weight 10) and one 20 mm^3 lesion (20 samples of weight 1)
    y = np.r_[np.ones(120), np.zeros(50)]
    w = np.r_[np.full(100, 10.0), np.ones(20), np.full(50, 3.0)]
    v = np.r_[np.full(100, 1000.0), np.full(20, 20.0), np.zeros(50)]
    assert np.array_equal(size_balanced(y, w, v, 0.0), w)
    out = size_balanced(y, w, v, 1.0)
    assert out[y > 0].sum() == pytest.approx(w[y > 0].sum())        # the positives' total is kept
    assert np.array_equal(out[y == 0], w[y == 0])                    # negatives untouched
    # each lesion's samples stand for its voxels (the big one's 100 samples for 1000 voxels): at alpha 1
    # both lesions weigh the same in the fit, at 0 the big one 50 times more
    assert out[:100].sum() == pytest.approx(out[100:120].sum())
    half = size_balanced(y, w, v, 0.5)
    assert half[:100].sum() / half[100:120].sum() == pytest.approx(50 ** 0.5)


def test_evidence_models_replace_the_segmentation_models_only_for_their_contrast_sets() -> None:
    import json

    from msimaging.lesion_model import bundled_evidence_models, bundled_models, load_models

    text = (Path(__file__).resolve().parents[2] / "src" / "msimaging" / "data" / "lesion_model.json").read_text()
    d = json.loads(text)
    seg = load_models(text)
    if "evidence_models" not in d:         # the shipped file is voxel-wise: one set of models
        assert {cs: m.threshold for cs, m in bundled_evidence_models().items()} == \
            {cs: m.threshold for cs, m in bundled_models().items()}
    full = ("FLAIR", "T2w", "T1w")
    other = [dict(m, threshold=0.123) for m in d["models"] if tuple(m["contrasts"]) == full]
    text2 = json.dumps({**d, "evidence_models": other})
    ev = load_models(text2, "evidence_models")
    assert set(ev) == set(seg) and ev[full].threshold == 0.123
    assert all(ev[cs].threshold == seg[cs].threshold for cs in seg if cs != full)
    assert all(m.threshold != 0.123 for m in load_models(text2).values())


def test_samples_cache_key_covers_every_module_the_samples_import() -> None:
    """The training-samples cache is keyed on ``SAMPLE_MODULES``: every package module that
    lesion_training can import (statically, function-level imports included) must be in it, so
    that no cache survives a change to code that makes the samples."""
    import ast
    from pathlib import Path

    from msimaging.bench.lesion_training import PACKAGE, SAMPLE_MODULES

    def path_of(name: str) -> Path | None:
        p = PACKAGE.joinpath(*name.split(".")[1:])
        for cand in (p / "__init__.py", p.with_suffix(".py")):
            if cand.is_file():
                return cand
        return None

    seen: set[Path] = set()
    todo = [PACKAGE / "bench" / "lesion_training.py"]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("msimaging"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("msimaging")]
            for n in names:
                parts = n.split(".")
                for i in range(1, len(parts) + 1):      # every package on the way is imported too
                    p = path_of(".".join(parts[:i]))
                    if p is not None:
                        todo.append(p)
    closure = {p.relative_to(PACKAGE).as_posix() for p in seen}
    assert closure <= set(SAMPLE_MODULES), sorted(closure - set(SAMPLE_MODULES))
