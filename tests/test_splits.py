import numpy as np
import pytest

from leukoscreen.training.fingerprints import FileInfo
from leukoscreen.training.prepared_data import prepare
from leukoscreen.training.splits import (SplitError, SplitRow, check_no_leak, group_kfold, load_split,
                                         merge_groups, save_split, train_val_test)


def info(sha: str, phash: str) -> FileInfo:
    return FileInfo(path=sha, sha256=sha, phash=phash, width=1, height=1, mode="RGB", error=None)


def test_exact_and_near_duplicates_merge_their_groups():
    infos = [info("a", "0000000000000000"), info("b", "ffffffffffffffff"), info("a", "0000000000000000"),
             info("c", "ffffffffffffff0f"), info("d", "00ff00ff00ff00ff")]
    merged = merge_groups(["g1", "g2", "g3", "g4", "g5"], infos, near_distance=6)
    assert merged[0] == merged[2]            # same sha256
    assert merged[1] == merged[3]            # hashes 4 bits apart
    assert len(set(merged)) == 3
    assert len(set(merge_groups(["g1", "g2", "g3", "g4", "g5"], infos, near_distance=-1))) == 4


def test_no_group_crosses_parts_and_parts_are_about_60_20_20():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(100), 10)
    labels = np.repeat(rng.integers(0, 3, 100), 10)
    parts = train_val_test(labels, groups, seed=3)
    for g in range(100):
        assert len(set(parts[groups == g])) == 1
    share = {p: np.mean(parts == p) for p in ("train", "val", "test")}
    assert abs(share["train"] - 0.6) < 0.05 and abs(share["val"] - 0.2) < 0.05
    for part in ("train", "val", "test"):  # stratified: every class in every part
        assert set(labels[parts == part]) == {0, 1, 2}


def test_group_kfold_keeps_groups_whole():
    groups = np.repeat(np.arange(40), 3)
    labels = groups % 2
    folds = group_kfold(labels, groups, folds=10)
    assert set(folds) == set(range(10))
    for g in range(40):
        assert len(set(folds[groups == g])) == 1
    with pytest.raises(SplitError, match="at least 50 groups"):
        group_kfold(labels, groups, folds=50)


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(SplitError, match="at least 5 are needed"):
        train_val_test(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))


def test_saved_split_round_trip_and_leak_check(tmp_path):
    rows = [SplitRow("a.jpg", "h1", "x", 0, "train"), SplitRow("b.jpg", "h2", "y", 1, "test")]
    save_split(tmp_path / "split.csv", rows)
    assert load_split(tmp_path / "split.csv") == rows
    check_no_leak(rows)
    with pytest.raises(SplitError, match="group 0 appears in both train and test"):
        check_no_leak(rows + [SplitRow("c.jpg", "h3", "x", 0, "test")])
    with pytest.raises(SplitError, match="sha256 h1"):
        check_no_leak(rows + [SplitRow("d.jpg", "h1", "x", 5, "val")])


def test_real_all_aria_split_does_not_leak(shared_data, tmp_path):
    prepared = prepare(shared_data / "all-aria", "subtype")
    check_no_leak(prepared.rows)
    by_hash = {}
    for row in prepared.rows:  # the 40 exact-duplicate pairs stay together
        by_hash.setdefault(row.sha256, set()).add(row.part)
    assert all(len(parts) == 1 for parts in by_hash.values())
    assert sum(1 for parts in by_hash.values()) < len(prepared.rows)
    save_split(tmp_path / "split.csv", prepared.rows)
    again = prepare(shared_data / "all-aria", "subtype", split_file=tmp_path / "split.csv")
    assert [r.part for r in again.rows] == [r.part for r in prepared.rows]
