"""Evaluation configs are checked before JAX starts: each mistake is one sentence naming the key."""

import importlib
import os
import subprocess
import sys
import time

import pytest

from facialr1_jax.eval import plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
eval_config = importlib.import_module("configs.eval")


def test_demo_config_plans_the_builtin_split(tmp_path):
    config = eval_config.get_config("demo")
    config.eval.checkpoint = str(tmp_path)
    checkpoint, specs = plan.check_eval_config(config)
    assert checkpoint == str(tmp_path)
    assert [(s.name, s.profile, s.builtin) for s in specs] == [("synthface", "synthface", True)]


def test_paper_config_runs_only_the_benchmarks_given(tmp_path):
    jsonl = tmp_path / "rafdb.jsonl"
    jsonl.write_text("")
    config = eval_config.get_config("paper")
    config.eval.checkpoint = str(tmp_path)
    config.benchmarks.rafdb.jsonl = str(jsonl)
    config.benchmarks.rafdb.image_root = str(tmp_path)
    config.benchmarks.rafdb.max_examples = 5
    _, specs = plan.check_eval_config(config)
    assert [(s.name, s.profile, s.jsonl, s.max_examples) for s in specs] == [("rafdb", "RAF-DB", str(jsonl), 5)]
    assert set(config.benchmarks) == set(eval_config.PAPER_BENCHMARKS)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, d: None, "no benchmark has a jsonl file"),
        (lambda c, d: setattr(c.benchmarks.rafdb, "jsonl", str(d / "nope.jsonl")), "rafdb.jsonl = .* is not a file"),
        (lambda c, d: setattr(c.benchmarks.rafdb, "profile", "CK+"), "rafdb.profile: unknown dataset 'CK\\+'"),
        (lambda c, d: setattr(c.benchmarks.disfa, "max_examples", -1), "disfa.max_examples = -1 must be >= 0"),
        (lambda c, d: setattr(c.eval, "checkpoint", ""), "no model to evaluate"),
        (lambda c, d: setattr(c.eval, "checkpoint", str(d / "absent")),
         "config.eval.checkpoint = .*absent.* does not exist"),
    ],
)
def test_bad_eval_configs_name_the_key(tmp_path, change, message):
    config = eval_config.get_config("paper")
    config.eval.checkpoint = str(tmp_path)
    change(config, tmp_path)
    with pytest.raises(plan.EvalConfigError, match=message):
        plan.check_eval_config(config)


def test_a_jsonl_without_image_root_is_rejected(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    config = eval_config.get_config("paper")
    config.eval.checkpoint = str(tmp_path)
    config.benchmarks.bp4d.jsonl = str(tmp_path / "a.jsonl")
    with pytest.raises(plan.EvalConfigError, match="bp4d.image_root is empty"):
        plan.check_eval_config(config)
    config.benchmarks.bp4d.image_root = str(tmp_path / "no-dir")
    with pytest.raises(plan.EvalConfigError, match="bp4d.image_root = .* is not a folder"):
        plan.check_eval_config(config)


def _launch(*args):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "eval.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], "no model to evaluate: set --checkpoint"),
        (["--checkpoint=/no/such/dir"], "config.eval.checkpoint = '/no/such/dir' does not exist"),
        (["--config=configs/sft.py"], "launch/eval.py needs an eval config"),
        (["--checkpoint=.", "--config.eval.batch_size=0"], "config.eval.batch_size = 0 must be > 0"),
        (["--checkpoint=.", "--config.benchmarks.synthface.nope=1"], "the config has no key"),
        (["--checkpoint=.", "--config=configs/eval.py:paper"], "no benchmark has a jsonl file"),
    ],
)
def test_eval_launcher_fails_fast_with_one_line(args, expected):
    proc, seconds = _launch(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert seconds < 15.0
