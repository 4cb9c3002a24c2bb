"""Speed, memory and scaling measurements against named baselines (`python -m benchmarks.X`)."""
