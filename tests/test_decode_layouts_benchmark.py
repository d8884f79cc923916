"""benchmarks/decode_layouts.py runs at toy sizes: both layouts of each part are timed."""

import json


def test_decode_layouts_benchmark_times_both_layouts(load_benchmark, capsys):
    result = load_benchmark("decode_layouts").main(
        ["--rows", "4", "--slots", "8", "--hidden", "16", "--intermediate", "24", "--vocab", "64", "--head_dim", "8",
         "--preset", "tiny", "--repeats", "1"])
    assert (result["rows"], result["slots"], result["preset"]) == (4, 8, "tiny")
    for key in ("scores_slots_minor_us", "scores_dim_major_us", "mlp_in_out_ms", "mlp_out_in_ms", "head_in_out_ms",
                "head_out_in_ms", "kernels_ms", "dim_major_speedup", "out_in_mlp_speedup", "out_in_head_speedup"):
        assert result[key] > 0, key
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
