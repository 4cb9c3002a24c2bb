"""benchmarks/seeded.py: what every seeded benchmark's table header says of its run."""

from benchmarks.seeded import took


def test_benchmark_headers_say_the_run_time_and_the_load_only_when_recorded():
    assert took({"seconds": 293.6, "load": ""}) == "294 s"
    assert took({"seconds": 12.0, "load": "unit tests beside it"}) == "12 s; unit tests beside it"
    assert took({"seconds": 5.0}) == "5 s"
