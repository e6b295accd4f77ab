"""The `rrb` command line as a user meets it: list, train, attack, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmark.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_kind_with_descriptions(capsys):
    code, out, _ = run_cli(capsys, "list", "presets")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["smoke", "quick", "paper"]
    assert all(len(line.split()) > 2 for line in out.splitlines())  # a description follows each name
    for kind, expected in (("datasets", {"digits", "omniglot", "mnist", "fashion", "cub", "cars", "sop"}),
                           ("models", {"c2f2", "resnet18"}),
                           ("attacks", {"ca+", "ca-", "qa+", "qa-", "tma", "es", "ltm", "gtm", "gtt"}),
                           ("defenses", {"nt", "est", "act", "hm", "colo-tride", "ca-tride", "ga",
                                         "naive-tride", "colo-cap", "colo-anp"})):
        code, out, _ = run_cli(capsys, "list", kind)
        assert code == 0
        assert expected <= {line.split()[0] for line in out.splitlines()}, kind


@pytest.mark.parametrize("argv, needle", [
    (["train", "--dataset", "nosuch"], "known datasets"),
    (["train", "--defense", "nosuch"], "known defenses"),
    (["train", "--dataset", "omniglot", "--data-root", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
    (["train", "--seed", "abc"], "--seed"),
    (["train", "--seed", "-3"], "--seed"),
    (["train", "--preset", "huge"], "known presets"),
    (["train", "--defense", "ga", "--defense-param", "nosuch=1"], "nosuch"),
    (["train", "--defense", "ga", "--defense-param", "epsilon=abc"], "epsilon"),
    (["attack", "--attacks", "ca+,nosuch"], "known attacks"),
    (["attack", "--queries", "0"], "--queries"),
    (["attack", "--queries", "some"], "'all'"),
    (["train", "--defense", "hm", "--defense-param", "margin=-5"], "accepted: 0 ≤ margin"),
    (["train", "--defense", "colo-tride", "--defense-param", "phases=both"], "alternate, cap, anp, joint"),
    (["list", "nosuch"], "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, *argv, *(["--results", str(tmp_path)] if argv[0] != "list" else []))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rrb: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_a_user_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmark", "train", "--dataset", "nosuch", "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("rrb: error:") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_then_attack_prints_metrics_raw_values_and_scores(capsys, tmp_path):
    results = str(tmp_path / "results")
    code, out, err = run_cli(capsys, "attack", "--preset", "smoke", "--results", results, "--quiet")
    assert code == 2 and "rrb train --dataset digits --defense nt --preset smoke --seed 0" in err

    code, out, _ = run_cli(capsys, "train", "--preset", "smoke", "--results", results, "--quiet")
    assert code == 0
    assert "trained:" in out and ".pt" in out
    for key in ("R@1=", "R@2=", "mAP=", "mAP@R=", "NMI=", "train R@1="):
        assert key in out
    checkpoints = list((tmp_path / "results" / "checkpoints" / "digits").glob("nt-s0-*.pt"))
    assert len(checkpoints) == 1

    code, out, _ = run_cli(capsys, "train", "--preset", "smoke", "--results", results, "--quiet")
    assert code == 0 and "loaded checkpoint" in out  # a second run reuses the checkpoint

    code, out, _ = run_cli(capsys, "attack", "--preset", "smoke", "--results", results, "--quiet")
    assert code == 0
    for key in ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT"):
        assert f" {key} " in out or out.count(key) >= 1
    assert "ERS=" in out and "ARS=" in out and "ERS:strong=" in out  # the strong evaluation by default
    assert "queries attacked: 16 of 539 test images" in out  # the smoke preset's query budget

    # --queries N and --queries all override the preset's budget (all: every test image);
    # --no-strong: the standard run alone
    for queries, expected in (("24", "24 of 539"), ("all", "539 of 539")):
        code, out, _ = run_cli(capsys, "attack", "--preset", "smoke", "--results", results, "--quiet",
                               "--attacks", "ca+", "--queries", queries, "--no-strong")
        assert code == 0 and f"queries attacked: {expected} test images" in out, out
        assert "strong" not in out


@pytest.mark.slow
def test_defense_params_change_the_checkpoint_key(capsys, tmp_path):
    results = str(tmp_path)
    base = ["train", "--preset", "smoke", "--defense", "ga", "--results", results, "--quiet"]
    assert run_cli(capsys, *base)[0] == 0
    assert run_cli(capsys, *base, "--defense-param", "gamma=0.05")[0] == 0
    assert len(list((tmp_path / "checkpoints" / "digits").glob("ga-s0-*.pt"))) == 2


def test_an_out_of_range_parameter_fails_before_training(tmp_path):
    """The range is checked before any data is loaded or any step is trained: nothing is written."""
    proc = subprocess.run([sys.executable, "-m", "benchmark", "train", "--dataset", "digits", "--defense", "hm",
                           "--defense-param", "margin=-5", "--results", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "rrb: error: defense 'hm': margin=-5.0 is not accepted; accepted: 0 ≤ margin"]
    assert not (tmp_path / "r").exists()


def test_defense_param_has_one_syntax_everywhere(capsys, tmp_path):
    """DEFENSE:NAME=VALUE is accepted by every command; NAME=VALUE alone where one defense is named."""
    from benchmark.cli import _cell_config, build_parser
    from benchmark.defense_api import parse_defense_params
    from benchmark.errors import BenchmarkError

    assert parse_defense_params(["ga:gamma=0.05"], ["ga"]) == parse_defense_params(["gamma=0.05"], ["ga"]) \
        == {"ga": {"gamma": "0.05"}}
    assert parse_defense_params(["ga:gamma=0.05", "hm:margin=0.3"], None) == {"ga": {"gamma": "0.05"},
                                                                               "hm": {"margin": "0.3"}}
    with pytest.raises(BenchmarkError, match="DEFENSE:NAME=VALUE"):
        parse_defense_params(["gamma=0.05"], ["ga", "nt"])
    configs = [_cell_config(build_parser().parse_args(["train", "--defense", "ga", "--defense-param", item]))
               for item in ("gamma=0.05", "ga:gamma=0.05")]
    assert configs[0] == configs[1] and configs[0].defense_params == (("gamma", "0.05"),)
    code, _, err = run_cli(capsys, "train", "--defense", "ga", "--defense-param", "nt:margin=1",
                           "--results", str(tmp_path / "r"))
    assert code == 2 and "this command runs 'ga'" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, "run", "--defenses", "ga,nt", "--defense-param", "gamma=1",
                           "--results", str(tmp_path / "r"))
    assert code == 2 and "DEFENSE:NAME=VALUE" in err and not (tmp_path / "r").exists()
