"""InsightFace's verification protocol, pinned on cases computed by hand, plus the pooled ROC numbers."""
from __future__ import annotations

import numpy as np
import pytest

from fresnet.errors import FresnetError
from fresnet.eval import kfold_split, roc_from_distances, verify, verify_distances
from fresnet.eval.verification import THRESHOLDS, pair_distances

# ---------------------------------------------------------------------------------------------------
# a literal transcription of the original loop (arcface_torch/eval/verification.py: calculate_roc +
# calculate_accuracy, pca=0), used as an oracle for the vectorised version


def _calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def _original_calculate_roc(thresholds, dist, actual_issame, nrof_folds):
    tprs = np.zeros((nrof_folds, len(thresholds)))
    fprs = np.zeros((nrof_folds, len(thresholds)))
    accuracy = np.zeros(nrof_folds)
    for fold_idx, (train_set, test_set) in enumerate(kfold_split(len(actual_issame), nrof_folds)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = _calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = _calculate_accuracy(
                threshold, dist[test_set], actual_issame[test_set])
        _, _, accuracy[fold_idx] = _calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set])
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy


# ---------------------------------------------------------------------------------------------------
# the split


def test_kfold_split_matches_sklearn_kfold_without_shuffle():
    # sklearn KFold(3).split(range(10)) -> test folds [0..3], [4..6], [7..9]
    folds = kfold_split(10, 3)
    assert [t.tolist() for _, t in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert folds[1][0].tolist() == [0, 1, 2, 3, 7, 8, 9]
    # LFold(n_splits=1): train = test = everything
    (train, test), = kfold_split(5, 1)
    assert train.tolist() == test.tolist() == [0, 1, 2, 3, 4]


def test_kfold_split_refuses_more_folds_than_pairs():
    with pytest.raises(FresnetError, match="--nfolds"):
        kfold_split(3, 10)


def test_threshold_grid_is_the_originals():
    assert THRESHOLDS.size == 400 and THRESHOLDS[0] == 0.0
    assert THRESHOLDS[7] == np.arange(0, 4, 0.01)[7] == 0.07000000000000001


# ---------------------------------------------------------------------------------------------------
# hand-computed protocol cases


def test_two_folds_where_the_train_folds_hold_one_class_only():
    # fold 1 trains on the two different-pairs: every threshold <= 1.5 is perfect, argmax takes the
    # FIRST (0.0), which rejects both same-pairs of the test fold -> 0. Fold 2 trains on the two
    # same-pairs: the first perfect threshold is 0.51 (> 0.5), which rejects 1.5 and 2.0 -> 1.
    r = verify_distances([0.1, 0.5, 1.5, 2.0], [True, True, False, False], nfolds=2)
    assert r.fold_thresholds == [0.0, THRESHOLDS[51]]
    assert r.fold_accuracies == [0.0, 1.0]
    assert r.accuracy == 0.5 and r.accuracy_std == 0.5


def test_ten_folds_with_one_mislabelled_looking_pair():
    # pairs alternate same (dist 0.305) / different (dist 1.0); pair 19 is "different" but at 0.2.
    # Folds 0-8 train with pair 19 in: best accuracy 17/18 for thresholds in (0.305, 1.0], first = 0.31,
    # and their test pairs are both right. Fold 9 trains without it (first perfect threshold 0.31) and
    # tests pair 19 at 0.2 < 0.31 -> wrong: 1/2. Mean 0.95; population std 0.15.
    dist = np.tile([0.305, 1.0], 10)
    same = np.tile([True, False], 10)
    dist[19] = 0.2
    r = verify_distances(dist, same, nfolds=10)
    assert r.fold_accuracies == [1.0] * 9 + [0.5]
    assert r.fold_thresholds == [THRESHOLDS[31]] * 10
    assert r.accuracy == pytest.approx(0.95, abs=1e-12)
    assert r.accuracy_std == pytest.approx(0.15, abs=1e-12)
    assert r["accuracy"] == r.accuracy  # reads like a dict too
    assert r.to_dict()["fold_accuracies"] == r.fold_accuracies


def test_predicted_same_only_when_strictly_below_the_threshold():
    # a distance equal to a grid value is NOT accepted at that threshold (np.less)
    r = verify_distances([THRESHOLDS[40], 3.0], [True, False], nfolds=1)
    assert r.fold_thresholds == [THRESHOLDS[41]]
    assert r.accuracy == 1.0


@pytest.mark.parametrize("num_pairs", [40, 137])
def test_vectorised_protocol_equals_the_original_loop(num_pairs):
    rng = np.random.default_rng(num_pairs)
    same = rng.random(num_pairs) < 0.5
    dist = np.where(same, rng.normal(0.9, 0.35, num_pairs), rng.normal(1.6, 0.35, num_pairs)).clip(0, 4)
    dist[::7] = np.round(dist[::7], 2)  # distances sitting on grid values: ties decide
    tpr, fpr, acc = _original_calculate_roc(THRESHOLDS, dist, same, 10)
    r = verify_distances(dist, same, nfolds=10)
    np.testing.assert_array_equal(r.fold_accuracies, acc)
    assert r.accuracy == np.mean(acc) and r.accuracy_std == np.std(acc)
    np.testing.assert_allclose(r.tpr, tpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.fpr, fpr, rtol=0, atol=1e-15)


def test_verify_normalises_embeddings_and_pairs_rows_2i_2i1():
    # unit vectors at angle a have squared distance 2 - 2 cos(a); scaling rows must not matter
    angles = np.array([0.2, 0.3, 1.9, 2.2])
    rows = []
    for a, scale in zip(angles, [1.0, 3.0, 0.5, 10.0]):
        rows += [[scale, 0.0], [np.cos(a), np.sin(a)]]
    emb = np.array(rows)
    np.testing.assert_allclose(pair_distances(emb), 2 - 2 * np.cos(angles), atol=1e-12)
    same = [True, True, False, False]
    r = verify(emb, same, nfolds=2)
    ref = verify_distances(2 - 2 * np.cos(angles), same, nfolds=2)
    assert r.fold_accuracies == ref.fold_accuracies
    # a zero embedding stays zero (sklearn.preprocessing.normalize): distance 1 to any unit vector
    assert pair_distances(np.array([[0.0, 0.0], [0.0, 2.0]]))[0] == 1.0


def test_verify_rejects_bad_shapes():
    with pytest.raises(FresnetError, match="2 embeddings per pair"):
        verify(np.zeros((5, 4)), [True, False])
    with pytest.raises(FresnetError, match="2 embeddings per pair"):
        verify(np.zeros((4,)), [True, False])


# ---------------------------------------------------------------------------------------------------
# the pooled ROC


def test_roc_auc_and_eer_by_hand():
    # ordered by distance: same, diff, same, diff -> AUC = 3/4 (Mann-Whitney), EER = 1/2
    roc = roc_from_distances([0.1, 0.2, 0.3, 0.4], [True, False, True, False])
    assert roc.fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert roc.tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert roc.auc() == 0.75
    assert roc.eer() == 0.5
    # with 2 negative pairs, FAR 0.1 is below the resolution (1/2): undefined, not 0.5
    assert roc.tar_at_far(0.1) is None
    assert roc.tar_at_far(0.5) == 1.0
    assert roc.threshold_at_far(0.5) == 0.3


def test_roc_separable_and_tied():
    roc = roc_from_distances([0.1, 0.2, 1.0, 2.0], [True, True, False, False])
    assert roc.auc() == 1.0 and roc.eer() == 0.0
    tied = roc_from_distances([1.0, 1.0, 1.0, 1.0], [True, False, True, False])
    assert tied.auc() == 0.5  # ties count 1/2
    assert tied.fpr.tolist() == [0, 1] and tied.tpr.tolist() == [0, 1]


def _insightface_far_train(thresholds, dist, same):
    # calculate_val's per-threshold FAR on the training folds (calculate_val_far)
    return np.array([np.sum((dist < t) & ~same) / np.sum(~same) for t in thresholds])


def test_tar_at_far_with_repeated_far_values_that_crash_the_original():
    # 1000 different-pairs: 10 at 0.5, 990 at 2.0; 100 same-pairs: 50 at 0.3, 50 at 1.0.
    dist = np.r_[np.full(10, 0.5), np.full(990, 2.0), np.full(50, 0.3), np.full(50, 1.0)]
    same = np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    # InsightFace's calculate_val interpolates threshold(FAR) with interp1d over this FAR curve,
    # whose values repeat (flat runs): current SciPy refuses non-unique x there.
    far_train = _insightface_far_train(np.arange(0, 4, 0.001), dist, same)
    assert np.unique(far_train).size < far_train.size
    try:
        from scipy import interpolate
    except ImportError:
        pass
    else:
        with pytest.raises(ValueError):
            interpolate.interp1d(far_train, np.arange(0, 4, 0.001), kind="slinear")(1e-3)
    r = verify_distances(dist, same, nfolds=10)
    # best TPR with at most floor(far * 1000) false accepts
    assert r.tar_at_far[1e-1] == 1.0
    assert r.tar_at_far[1e-2] == 1.0
    assert r.tar_at_far[1e-3] == 0.5
    assert r.tar_at_far[1e-4] is None and r.tar_at_far[1e-6] is None  # below 1/1000: unreachable
    assert any("smallest measurable FAR is 0.001" in note for note in r.notes)
    assert r.to_dict()["tar_at_far"]["1e-03"] == 0.5


def test_all_same_pairs_leave_roc_numbers_undefined():
    r = verify_distances([0.2, 0.4, 0.6], [True, True, True], nfolds=3)
    assert r.auc is None and r.eer is None and all(v is None for v in r.tar_at_far.values())
    # the last fold trains on 0.2 and 0.4 (first perfect threshold 0.41) and so rejects its 0.6
    assert r.fold_accuracies == [1.0, 1.0, 0.0]
    assert any("no negative pairs" in note for note in r.notes)
