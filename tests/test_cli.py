"""The demo end to end on a small configuration: it runs, prints the table and writes the report."""

import json

import pytest

from tdakit.cli import main


def test_demo_writes_the_report_and_reuses_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TDAKIT_CACHE", str(tmp_path / "cache"))
    args = ["demo", "--out", str(tmp_path / "report"), "--epochs", "2", "--train", "64", "--queries", "6",
            "--subsets", "6", "--seeds", "2", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "LDS [95% interval]" in out and "reliability" in out and "note: the demo uses R = 2 seeds" in out
    table = json.loads((tmp_path / "report" / "table.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["exact unrolling", "influence", "SOURCE (L=3, C=6)",
                                                   "Fast-SOURCE (L=3)"]
    assert "(from cache)" not in out
    assert all(-1 <= r["lds"] <= 1 and r["lds_low"] <= r["lds"] <= r["lds_high"] for r in table["rows"])
    same = json.loads((tmp_path / "report" / "table_same_trajectory.json").read_text())
    assert same["protocol"] == "same" and table["protocol"] == "fresh"
    assert [r["label"] for r in same["rows"]] == [r["label"] for r in table["rows"]]
    assert "same trajectory (the run's initialisation" in out and "exact unrolling ranks" in out
    for png in ("scores_vs_unrolled.png", "predicted_vs_actual.png", "lds.png", "lds_same_trajectory.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert cached.count("run") == 1 and cached.count("groundtruth") >= 1 and cached.count("scores") == 4
    assert main(args) == 0  # everything from the cache: the same table, and it says so
    assert capsys.readouterr().out.count("(from cache)") == 4
    again = json.loads((tmp_path / "report" / "table.json").read_text())["rows"]
    assert [(r["lds"], r["seconds"], r["from_cache"]) for r in again] == [(r["lds"], r["seconds"], True)
                                                                        for r in table["rows"]]


def test_demo_refuses_too_few_seeds(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seeds", "1", "--quiet"]) == 2
    assert "at least 2 subsets and 2 seeds" in capsys.readouterr().err


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["train-everything"])


def test_version_and_bad_query_counts(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("tdakit 0.")
    assert main(["demo", "--out", str(tmp_path), "--queries", "0", "--quiet"]) == 2
    assert "--queries must be at least 1" in capsys.readouterr().err
