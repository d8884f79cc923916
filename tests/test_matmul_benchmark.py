"""benchmarks/matmul_cpu.py runs at toy sizes and reports every form for both frameworks."""


def test_matmul_benchmark_reports_all_forms_for_both_sides(load_benchmark, capsys):
    result = load_benchmark("matmul_cpu").main(["--m", "64", "--k", "32", "--n", "48", "--repeats", "1"])
    assert (result["m"], result["k"], result["n"]) == (64, 32, 48)
    assert set(result["gflops"]) == {"forward x@w", "weight_grad x.T@dy", "input_grad dy@w.T"}
    for side in result["gflops"].values():
        assert side["jax"] > 0 and side["torch"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
