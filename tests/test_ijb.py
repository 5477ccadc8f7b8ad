"""IJB-B/C evaluation: InsightFace's numbers on the reference set in all eight modes, the standard
open-set metric on hand-built cases, scikit-learn's ROC, and bad inputs named by file and line."""
from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest

from conftest import reference_path
from fresnet.errors import FresnetError
from fresnet.eval.ijb import IJBResult, evaluate
from fresnet.eval.ijb.identification import open_set_tpir
from fresnet.eval.ijb.layout import read_meta
from fresnet.eval.ijb.pooling import Mode, group_faces, l2_normalize_rows, pool_templates
from fresnet.eval.ijb.synthetic import synthetic_features, synthetic_ijb, write_meta
from fresnet.eval.ijb.verification import pair_scores, tar_at_far_nearest, template_index
from fresnet.eval.roc import auc_trapezoid, roc_curve_sklearn

MODES = [f"F{f}N{n}D{d}" for f in (1, 0) for n in (1, 0) for d in (1, 0)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    archive = reference_path("ijb", "ijbc_dev.tar.xz")
    root = tmp_path_factory.mktemp("ijbc_dev")
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(root, filter="data")
    expected = json.loads((root / "expected.json").read_text())["modes"]
    return root, read_meta(root), np.load(root / "features.npy"), expected


@pytest.mark.reference
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_equals_insightface_on_the_reference_set(reference, mode):
    root, meta, features, expected = reference
    m, e = Mode.parse(mode), expected[mode]
    result = evaluate(meta, features, flip=m.flip, norm_score=m.norm_score, detector_score=m.detector_score,
                      mirrored=True)
    assert isinstance(result, IJBResult) and result.mode == mode
    assert result.auc == pytest.approx(e["auc"], abs=1e-9)
    for far, tar in e["tar_at_far"].items():
        assert result.tar_at_far[float(far)] == pytest.approx(tar, abs=1e-9), far
    assert result.scores.sum() == pytest.approx(e["score_sum"], abs=1e-9)
    np.testing.assert_allclose(result.scores[:5], e["score_first5"], rtol=0, atol=1e-9)
    ident = e["identification"]
    for k in (1, 5, 10):
        assert result.top_k[k] == pytest.approx(ident[f"top{k}"], abs=1e-9)
    for far, numbers in ident["pr_at_far"].items():  # printed by ijb_1n.py with 10 decimals
        tpir, threshold = result.tpir_at_fpir_insightface[float(far)]
        assert tpir == pytest.approx(numbers["pr"], abs=1e-9)
        assert threshold == pytest.approx(numbers["th"], abs=1e-9)
    if mode == "F1N1D1":
        np.testing.assert_allclose(result.scores, np.load(root / "expected_scores_F1N1D1.npy"), rtol=0, atol=1e-12)
        # a path to a .npy works as well (memory-mapped)
        again = evaluate(root, root / "features.npy")
        np.testing.assert_array_equal(again.scores, result.scores)


def _standard_by_definition(meta, templates, ids, fpir):
    """The open-set metric straight from its definition, one probe at a time."""
    out = {}
    for name, lst in meta.galleries.items():
        gallery, first = np.unique(lst.templates, return_index=True)
        g_subjects = lst.subjects[first]
        g_rows = templates[np.searchsorted(ids, gallery)]
        probes, first = np.unique(meta.probes.templates, return_index=True)
        p_subjects = meta.probes.subjects[first]
        mated_best, nonmated_top = [], []
        for t, subject in zip(probes, p_subjects):
            sims = g_rows @ templates[np.searchsorted(ids, t)]
            mate = g_subjects == subject
            if mate.any():
                mated_best.append((sims[mate].max(), sims[~mate].max(initial=-np.inf)))
            else:
                nonmated_top.append(sims.max())
        nonmated_top = sorted(nonmated_top, reverse=True)
        threshold = nonmated_top[int(math.floor(round(fpir * len(nonmated_top), 9)))]
        hits = sum(m > other and m > threshold for m, other in mated_best)
        out[name] = (hits / len(mated_best), threshold)
    return out


@pytest.mark.reference
def test_standard_open_set_metric_follows_its_definition_on_the_reference_set(reference):
    _, meta, features, _ = reference
    result = evaluate(meta, features)
    groups = group_faces(meta.faces.templates, meta.faces.medias)
    templates = l2_normalize_rows(pool_templates(features, meta.faces.faceness, groups, Mode(), True))
    for fpir in (0.01, 0.1):
        expected = _standard_by_definition(meta, templates, groups.templates, fpir)
        for name, (tpir, threshold) in expected.items():
            assert result.tpir_at_fpir[name][fpir][0] == pytest.approx(tpir, abs=1e-12)
            assert result.tpir_at_fpir[name][fpir][1] == pytest.approx(threshold, abs=1e-12)


def _insightface_pooling(features, templates, medias):
    """``image2template_feature`` as written in InsightFace's scripts (float32 faces)."""
    out = []
    for t in np.unique(templates):
        (ind_t,) = np.where(templates == t)
        face_feats, face_medias = features[ind_t], medias[ind_t]
        media_feats = []
        for u, count in zip(*np.unique(face_medias, return_counts=True)):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m] if count == 1 else np.mean(face_feats[ind_m], 0, keepdims=True))
        out.append(np.sum(np.array(media_feats), 0)[0])
    return np.array(out, dtype=np.float64)


def test_pooling_rounds_like_insightface_with_long_videos():
    rng = np.random.default_rng(3)
    faces = 700
    templates = rng.integers(0, 12, faces) * 7 + 100
    medias = rng.integers(0, 5, faces)  # few media per template: long "videos"
    features = (rng.standard_normal((faces, 2 * 24)) * rng.uniform(1, 20, (faces, 1))).astype(np.float32)
    faceness = rng.uniform(0.3, 1, faces).astype(np.float32)
    groups = group_faces(templates, medias)
    for mode in (Mode(), Mode(False, False, True), Mode(True, False, False)):
        per_face = mode.face_features(features, faceness, mirrored=True)
        expected = _insightface_pooling(per_face, templates, medias)
        # float32 rounding reproduced exactly: the pooled sums are bit-identical
        np.testing.assert_array_equal(pool_templates(features, faceness, groups, mode, True, chunk_faces=50), expected)


def test_pair_scores_match_row_by_row_products_on_both_paths():
    rng = np.random.default_rng(0)
    templates = l2_normalize_rows(rng.standard_normal((60, 16)))
    dense_first, dense_second = rng.integers(0, 10, 500), rng.integers(10, 60, 500)
    sparse_first, sparse_second = rng.integers(0, 60, 20), rng.integers(0, 60, 20)
    for first, second in ((dense_first, dense_second), (sparse_first, sparse_second)):
        expected = np.sum(templates[first] * templates[second], -1)
        np.testing.assert_allclose(
            pair_scores(templates, first, second, block_bytes=1024), expected, rtol=0, atol=1e-15
        )


def test_scores_from_the_identification_blocks_equal_the_direct_ones():
    ijb = synthetic_ijb(400, seed=2)
    features = synthetic_features(ijb, dim=32, seed=2)
    meta = ijb.to_meta()
    on_grid = evaluate(meta, features)  # the pairs join gallery and probe templates: read from the 1:N pass
    alone = evaluate(meta.__class__(meta.paths, meta.faces, meta.pairs), features)  # no 1:N lists
    assert alone.top_k is None and alone.tpir_at_fpir is None
    np.testing.assert_allclose(on_grid.scores, alone.scores, rtol=0, atol=1e-15)
    assert on_grid.tar_at_far == alone.tar_at_far


# ---- the standard open-set metric on hand-built cases ------------------------------------------


def test_open_set_threshold_is_the_right_order_statistic():
    # four non-mated probes (top-1 scores 0.9, 0.7, 0.5, 0.3), three mated ones
    inf = -np.inf
    mated_best = np.array([inf, inf, inf, inf, 0.95, 0.8, 0.6])
    nonmated_best = np.array([0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.65])
    out = open_set_tpir(mated_best, nonmated_best, fpirs=(0.25, 0.5, 0.01))
    # f = 0.25, n = 4: floor(1) + 1 = 2nd highest = 0.7; above it and ranked first: 0.95 and 0.8
    assert out[0.25] == (pytest.approx(2 / 3), 0.7)
    # f = 0.5: 3rd highest = 0.5; the 0.6 probe's best mated template is beaten by a non-mated one (0.65)
    assert out[0.5] == (pytest.approx(2 / 3), 0.5)
    # FPIR below 1/n: the threshold is the highest non-mated score, i.e. FPIR 0
    assert out[0.01] == (pytest.approx(1 / 3), 0.9)


def test_open_set_ties_count_against_the_probe():
    inf = -np.inf
    # non-mated top-1 scores tie at 0.7: the 2nd highest is 0.7 as well
    mated_best = np.array([inf, inf, inf, 0.7, 0.8, 0.8])
    nonmated_best = np.array([0.7, 0.7, 0.2, 0.1, 0.1, 0.8])
    out = open_set_tpir(mated_best, nonmated_best, fpirs=(0.34,))
    tpir, threshold = out[0.34]
    assert threshold == 0.7
    # 0.7 is not strictly above the threshold; 0.8 tied with a non-mated template does not rank first
    assert tpir == pytest.approx(1 / 3)


def test_open_set_probe_without_a_mate_is_non_mated_and_undefined_cases_are_none():
    inf = -np.inf
    # the last probe's subject is not enrolled: it can only raise a false alarm
    out = open_set_tpir(np.array([0.9, 0.8, inf]), np.array([0.1, 0.85, 0.5]), fpirs=(0.1,))
    assert out[0.1] == (pytest.approx(1 / 2), 0.5)
    assert open_set_tpir(np.array([0.9, 0.8]), np.array([0.1, 0.2]))[0.1] is None  # no non-mated probe
    assert open_set_tpir(np.array([inf, inf]), np.array([0.1, 0.2]))[0.1] is None  # no mated probe


def test_floor_of_f_times_n_is_not_fooled_by_rounding():
    inf = -np.inf
    top1 = np.linspace(1, 0.01, 100)  # 100 non-mated probes
    mated_best, nonmated_best = np.r_[np.full(100, inf), 2.0], np.r_[top1, 0.0]
    # 0.29 * 100 = 28.999999999999996 in floats: still 29 false alarms allowed, threshold the 30th
    assert open_set_tpir(mated_best, nonmated_best, fpirs=(0.29,))[0.29][1] == top1[29]


# ---- scikit-learn's ROC and InsightFace's reading of it ----------------------------------------


def test_roc_keeps_only_the_corners_like_sklearn():
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0])
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3, 0.2, 0.1])
    fpr, tpr, thresholds = roc_curve_sklearn(labels, scores)
    # what sklearn 1.9's roc_curve returns: 0.9 and 0.2 lie on straight segments and are dropped
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.0, 0.2, 0.2, 0.6, 0.6, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.2, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.95, 0.8, 0.7, 0.6, 0.5, 0.3, 0.1])
    assert auc_trapezoid(fpr, tpr) == pytest.approx(0.84)
    full_fpr, _, _ = roc_curve_sklearn(labels, scores, drop_intermediate=False)
    assert len(full_fpr) == 10  # one point per distinct score (9) and the origin


def test_roc_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = (rng.random(400) < 0.3).astype(int)
        scores = np.round(rng.standard_normal(400) + labels, 1)  # many ties
        for drop in (True, False):
            expected = metrics.roc_curve(labels, scores, drop_intermediate=drop)
            for mine, theirs in zip(roc_curve_sklearn(labels, scores, drop), expected):
                np.testing.assert_array_equal(mine, theirs)


def test_nearest_fpr_rule_takes_the_highest_tpr_on_a_tie():
    fpr = np.array([0.0, 0.0, 0.1, 0.3, 1.0])
    tpr = np.array([0.0, 0.4, 0.6, 0.9, 1.0])
    table = tar_at_far_nearest(fpr, tpr, fars=(1e-6, 0.2, 0.1))
    assert table[1e-6] == 0.4  # two points at FPR 0: the later (higher) one
    assert table[0.2] == 0.9  # 0.1 and 0.3 equally near: the later one
    assert table[0.1] == 0.6


# ---- bad inputs ---------------------------------------------------------------------------------


@pytest.fixture
def small_set(tmp_path):
    ijb = synthetic_ijb(60, seed=1)
    write_meta(ijb, tmp_path)
    return tmp_path, ijb, synthetic_features(ijb, dim=8)


def test_a_pair_naming_an_unknown_template_names_the_line(small_set):
    root, ijb, features = small_set
    path = root / "meta" / "ijbc_template_pair_label.txt"
    lines = path.read_text().splitlines()
    lines[3] = f"{lines[3].split()[0]} 999999 0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FresnetError, match=r"ijbc_template_pair_label.txt: line 4: template 999999 is not in"):
        evaluate(root, features)


def test_a_1n_template_without_faces_names_the_csv_line(small_set):
    root, ijb, features = small_set
    path = root / "meta" / "ijbc_1N_probe_mixed.csv"
    path.write_text(path.read_text() + "424242,1000,img/x.jpg\n")
    rows = len(path.read_text().splitlines())
    with pytest.raises(FresnetError, match=rf"probe_mixed.csv: line {rows}: template 424242 has no faces"):
        evaluate(root, features)


def test_wrong_feature_rows_and_layout_are_explained(small_set):
    root, ijb, features = small_set
    with pytest.raises(FresnetError, match=r"features have 59 rows but .*ijbc_name_5pts_score.txt lists 60 faces"):
        evaluate(root, features[:-1])
    with pytest.raises(FresnetError, match="2\\*D columns"):
        evaluate(root, features[:, :-1])
    evaluate(root, features[:, :8], flip=False, mirrored=False)  # (faces, D) said explicitly is fine


def test_missing_and_malformed_meta_files_are_named(small_set):
    root, ijb, features = small_set
    (root / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    with pytest.raises(FresnetError, match="ijbc_1N_gallery_G2.csv: missing"):
        evaluate(root, features)
    for name in ("ijbc_1N_gallery_G1.csv", "ijbc_1N_probe_mixed.csv"):
        (root / "meta" / name).unlink()
    result = evaluate(root, features)  # no 1:N files at all: 1:1 only, said in a note
    assert result.top_k is None and "1:1 only" in result.notes[0]
    with pytest.raises(FresnetError, match="ijbb_face_tid_mid.txt: missing.*--target"):
        evaluate(root, features, target="IJBB")
    faces = root / "meta" / "ijbc_face_tid_mid.txt"
    lines = faces.read_text().splitlines()
    lines[6] = lines[6] + " extra"
    faces.write_text("\n".join(lines) + "\n")
    with pytest.raises(FresnetError, match="ijbc_face_tid_mid.txt: line 7: expected 'image template_id media_id'"):
        evaluate(root, features)
    lines[6] = lines[6].rsplit(" ", 1)[0]
    name, template, media = lines[6].split()
    faces.write_text("\n".join(lines[:6] + [f"{name} x{template} {media}"] + lines[7:]) + "\n")
    with pytest.raises(FresnetError, match=f"face_tid_mid.txt: line 7: 'x{template}' is not an integer"):
        evaluate(root, features)
    faces.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FresnetError, match="5pts_score.txt lists 60 faces but .*face_tid_mid.txt lists 59"):
        evaluate(root, features)
    faces.write_text("\n".join(lines) + "\n")
    pts = root / "meta" / "ijbc_name_5pts_score.txt"
    original = pts.read_text()
    rows = original.splitlines()
    rows[9] = rows[9].replace(rows[9].split()[3], "abc", 1)
    pts.write_text("\n".join(rows) + "\n")
    with pytest.raises(FresnetError, match="5pts_score.txt: line 10: 'abc' is not a number"):
        evaluate(root, features)
    pts.write_text(original)
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    pairs.write_text(pairs.read_text().replace("\n", "\n\n", 2) + "1 2\n")  # blank lines, then a short one
    last = len(pairs.read_text().splitlines())
    with pytest.raises(FresnetError, match=rf"pair_label.txt: line {last}: expected 'template1 template2 label'"):
        read_meta(root)


def test_template_lookup_for_large_ids_uses_a_search():
    ids = np.array([5, 10**12, 10**13])
    pos, found = template_index(ids, np.array([10**13, 7, 5]))
    assert pos[0] == 2 and pos[2] == 0 and found.tolist() == [True, False, True]


# ---- hostile meta files (docs/security.md): every refusal names the file, and the line ---------


def test_non_finite_landmarks_and_faceness_are_refused_with_their_line(small_set):
    root, ijb, features = small_set
    pts = root / "meta" / "ijbc_name_5pts_score.txt"
    original = pts.read_text().splitlines()
    for line, column, value in ((5, 2, "nan"), (8, 4, "1e39"), (12, -1, "inf")):
        rows = list(original)
        fields = rows[line - 1].split()
        fields[column] = value
        rows[line - 1] = " ".join(fields)
        pts.write_text("\n".join(rows) + "\n")
        what = "the faceness score" if column == -1 else "a landmark"
        with pytest.raises(FresnetError, match=rf"5pts_score.txt: line {line}: {what} is not a finite number"):
            read_meta(root)


def test_meta_files_that_are_not_regular_files_or_too_large_are_refused(small_set):
    import os

    from fresnet.limits import override

    root, ijb, features = small_set
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    pairs.rename(root / "pairs.txt")
    os.mkfifo(pairs)  # np.loadtxt would block on it forever
    with pytest.raises(FresnetError, match="pair_label.txt: is a FIFO"):
        read_meta(root)
    pairs.unlink()
    (root / "pairs.txt").rename(pairs)
    with override(max_list_bytes=1000):
        with pytest.raises(FresnetError, match=r"5pts_score.txt: reading .* above the limit max_list_bytes=1,000"):
            read_meta(root)
    pts = root / "meta" / "ijbc_name_5pts_score.txt"
    pts.write_bytes(b"\xff\xfe" + pts.read_bytes())
    with pytest.raises(FresnetError, match="5pts_score.txt: the IJB meta file .* is not utf-8 text"):
        read_meta(root)


def test_an_integer_beyond_int64_in_the_pair_list_names_its_line(small_set):
    root, ijb, features = small_set
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    lines[2] = "1 99999999999999999999999 1"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(FresnetError, match="pair_label.txt: line 3: expected"):
        read_meta(root)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "[" * 5000, '{"version": 1, "done": "x"}'])
def test_a_damaged_progress_file_is_one_clean_error(tmp_path, content):
    from fresnet.eval.ijb.extract import FeatureStore, read_progress

    features = tmp_path / "f.npy"
    np.save(features, np.zeros((4, 6), dtype=np.float32))
    sidecar = tmp_path / "f.npy.progress.json"
    sidecar.write_text(content)
    store = FeatureStore(features, 4, {})
    with pytest.raises(FresnetError, match=r"f.npy.progress.json.*delete it and f.npy"):
        if content.startswith('{"version"'):
            import fresnet.eval.ijb.extract as extract

            sidecar.write_text(json.dumps({"version": extract.FORMAT_VERSION, "faces": 4, "width": 6, "done": "x"}))
            store.resume()
        else:
            read_progress(sidecar)


def test_a_synthetic_release_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    from fresnet.cli import main as cli_main

    # the pair table grows quadratically: 10^9 faces would need 71e12 pairs (1.7 PB)
    with pytest.raises(
        FresnetError, match=r"synthetic IJB set of 1,000,000,000 faces .* above the limit max_tensor_bytes"
    ):
        synthetic_ijb(10**9)
    assert cli_main(["synth", "--ijb", str(tmp_path / "ijb"), "--faces", "4000000", "--no-pictures"]) == 2
    assert "4,000,000 faces (1,136,209,437 pairs)" in capsys.readouterr().err
    assert not (tmp_path / "ijb" / "meta").exists()


# ---- the features layout rule (issue 24, item 1) ------------------------------------------------


@pytest.mark.reference
def test_f0_on_a_mirrored_array_uses_the_first_half_by_default(reference):
    root, meta, features, expected = reference
    e = expected["F0N1D1"]
    result = evaluate(meta, features, flip=False)  # (faces, 2*D), no layout said: InsightFace's
    for far, tar in e["tar_at_far"].items():
        assert result.tar_at_far[float(far)] == pytest.approx(tar, abs=1e-9), far
    assert result.counts["embedding_size"] == features.shape[1] // 2


@pytest.mark.reference
def test_f0_from_the_command_line_on_a_features_file_without_sidecar(reference, tmp_path, capsys):
    from fresnet.cli import main

    root, meta, features, expected = reference
    path = tmp_path / "insightface_features.npy"
    np.save(path, features)
    out = tmp_path / "report"
    assert main(["eval", "--ijb", str(root), "--features", str(path), "--no-flip", "--out", str(out)]) == 0
    report = json.loads((out / "ijb.json").read_text())
    for far, tar in expected["F0N1D1"]["tar_at_far"].items():
        assert report["verification"]["tar_at_far"][f"{float(far):g}"] == pytest.approx(tar, abs=1e-9), far
    assert report["features_layout"] == "mirrored"


def test_a_single_layout_must_be_said(small_set, tmp_path, capsys):
    from fresnet.cli import main

    root, ijb, features = small_set
    single = np.ascontiguousarray(features[:, :8])
    explicit = evaluate(root, single, flip=False, mirrored=False)
    assert explicit.counts["embedding_size"] == 8
    with pytest.raises(FresnetError, match="mirrored=False"):
        evaluate(root, single[:, :7], flip=False)  # odd width cannot be (faces, 2*D)
    path = tmp_path / "single.npy"
    np.save(path, single)
    out = tmp_path / "r"
    assert main(["eval", "--ijb", str(root), "--features", str(path), "--no-flip", "--features-layout", "single",
                 "--out", str(out)]) == 0
    assert json.loads((out / "ijb.json").read_text())["counts"]["embedding_size"] == 8
    assert main(["eval", "--ijb", str(root), "--features", str(path), "--features-layout", "single",
                 "--out", str(out)]) == 2
    assert "--no-flip" in capsys.readouterr().err


def test_a_limit_hit_by_the_users_own_value_says_so(tmp_path, capsys):
    from fresnet.cli import main as cli_main

    assert cli_main(["synth", "--ijb", str(tmp_path / "ijb"), "--faces", "1000000000", "--no-pictures"]) == 2
    err = capsys.readouterr().err
    assert "damaged or hostile" not in err
    assert "the size asked for" in err and "--limit max_tensor_bytes=" in err


def test_fars_the_impostor_count_cannot_support_are_flagged(small_set, tmp_path, capsys):
    from fresnet.cli import main as cli_main

    root, _ijb, features = small_set
    result = evaluate(root, features)
    impostors = int(np.count_nonzero(result.labels == 0))
    assert 1 <= impostors < 10**4
    assert result.unsupported_fars == tuple(f for f in result.tar_at_far if f * impostors < 1)
    assert 1e-6 in result.unsupported_fars
    from fresnet.eval.ijb.verification import unsupported_fars

    assert unsupported_fars(20) == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # 20 impostors resolve FAR 0.1 only
    assert unsupported_fars(10**6) == ()
    assert set(result.tar_at_far) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}  # InsightFace's numbers are kept
    assert result.to_dict()["verification"]["unsupported_fars"] == [f"{f:g}" for f in result.unsupported_fars]
    path = tmp_path / "f.npy"
    np.save(path, features)
    assert cli_main(["eval", "--ijb", str(root), "--features", str(path), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "1e-06*" in out and f"{impostors} impostor pairs" in out


def test_one_features_reader_for_the_library_and_the_command_line(small_set, tmp_path):
    """evaluate(root, path) reads features as `--features` does: an unfinished extraction is refused."""
    from fresnet.eval.ijb.protocol import load_features

    root, _ijb, features = small_set
    path = tmp_path / "f.npy"
    np.save(path, features)
    array, recorded = load_features(path)
    assert recorded is None and array.shape == features.shape
    (tmp_path / "f.npy.progress.json").write_text(json.dumps({"done": 3, "faces": 60, "flip": True,
                                                               "complete": False}))
    with pytest.raises(FresnetError, match="stopped at face 3 of 60"):
        evaluate(root, path)
