"""benchmarks/head_gradient.py runs at toy sizes: both gradients agree and both sides are timed."""

import json


def test_head_gradient_benchmark_times_both_sides(load_benchmark, capsys):
    result = load_benchmark("head_gradient").main(["--rows", "3", "--length", "8", "--hidden", "16",
                                                   "--vocab", "200", "--repeats", "1"])
    assert (result["rows"], result["length"], result["hidden"], result["vocab"]) == (3, 8, 16, 200)
    assert result["hand_written_ms"] > 0 and result["autodiff_ms"] > 0 and result["speedup"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["speedup"] == result["speedup"]
