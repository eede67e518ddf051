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
