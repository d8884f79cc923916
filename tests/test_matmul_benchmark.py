"""benchmarks/matmul_cpu.py runs at toy sizes and reports every form for both frameworks."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_matmul_benchmark_reports_all_forms_for_both_sides(capsys):
    spec = importlib.util.spec_from_file_location("matmul_cpu", os.path.join(REPO, "benchmarks", "matmul_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--m", "64", "--k", "32", "--n", "48", "--repeats", "1"])
    assert (result["m"], result["k"], result["n"]) == (64, 32, 48)
    assert set(result["gflops"]) == {"forward x@w", "weight_grad x.T@dy", "input_grad dy@w.T"}
    for side in result["gflops"].values():
        assert side["jax"] > 0 and side["torch"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
