import json
import shutil

from leukoscreen.cli import main


def test_audit_reports_counts_duplicates_and_unreadable(aria_like, tmp_path, capsys):
    early = aria_like / "Early"
    shutil.copy(early / "WBC-Malignant-Early-001.jpg", early / "WBC-Malignant-Early-050.jpg")
    (early / "WBC-Malignant-Early-051.jpg").write_bytes(b"garbage")
    assert main(["data", "audit", str(aria_like), "--out", str(tmp_path / "audit")]) == 0
    result = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert result["classes"] == {"Benign": 30, "Early": 32}
    assert result["sizes"] == {"96x96": 61}
    assert len(result["unreadable"]) == 1 and "Early-051" in result["unreadable"][0]["path"]
    assert [sorted(p.rsplit("-", 1)[1] for p in s) for s in result["exact_duplicates"]] == [["001.jpg", "050.jpg"]]
    assert "exact duplicate sets: 1" in (tmp_path / "audit" / "audit.md").read_text()
    assert "| Benign | 30 |" in capsys.readouterr().out


def test_shortcut_probes_write_scores(aria_like, tmp_path):
    assert main(["data", "shortcuts", str(aria_like), "--block-size", "3", "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "shortcuts.json").read_text())
    assert set(result["probes"]) == {"colour_mean_std", "colour_histogram", "sharpness", "stained_area",
                                     "patch_bottom_right", "patch_top_left", "patch_centre"}
    for probe in result["probes"].values():
        assert 0 <= probe["macro_f1"] <= 1 and probe["ci95"]["macro_f1"][0] <= probe["macro_f1"]
