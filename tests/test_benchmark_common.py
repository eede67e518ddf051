"""The benchmarks' shared helper: interleaved rounds, spread and the results file."""

import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"


@pytest.fixture
def common(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmarks_common", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    monkeypatch.setattr(module, "ROOT", tmp_path.parent)
    return module


def test_interleave_runs_every_variant_once_per_round_in_the_asked_order(common):
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    results = common.interleave(variants, rounds=2, order="alternate", progress=False)
    assert calls == ["a", "b", "c", "c", "b", "a"]
    assert results == {"a": [1, 6], "b": [2, 5], "c": [3, 4]}
    calls.clear()
    common.interleave(variants, rounds=4, order="shuffle", progress=False)
    rounds = [calls[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)


def test_spread_helpers_match_their_definitions(common):
    assert common.quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    assert common.mean_sd([2.0, 4.0]) == (3.0, pytest.approx(2 ** 0.5))
    assert common.mean_sd([7.0]) == (7.0, 0.0)
    assert common.format_mean_sd([0.1, 0.3], digits=1, scale=10) == "2.0 ± 1.4"


def test_results_file_has_command_and_machine_and_keeps_a_handwritten_reading(common, tmp_path):
    (tmp_path / "demo.md").write_text("# old\n\nold table\n\n## Reading\n\nBy hand.\n")
    path = common.write_results("demo", "Demo", [common.table(["a", "b"], [[1, 2]])])
    text = path.read_text()
    assert text.startswith("# Demo\n\nCommand: `")
    assert "Machine: " in text and "load average" in text
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in text
    assert "old table" not in text and text.endswith("## Reading\n\nBy hand.\n")


def test_commit_names_the_code_measured_and_ignores_results_files(common, tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "benchmarks" / "results" / "demo.md").write_text("old\n")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short", "HEAD").strip()
    common.ROOT = repo
    assert common.commit() == head
    (repo / "benchmarks" / "results" / "demo.md").write_text("new results\n")
    (repo / "untracked.py").write_text("")
    assert common.commit() == head  # results and untracked files are not the code measured
    (repo / "code.py").write_text("x = 2\n")
    assert common.commit() == head + "+dirty"
    assert f"commit {head}+dirty" in common.machine()
