"""Optimal-transport alignment, GNN encoders and heads, training loop and baselines.

Library code: takes arguments, never reads params.yaml, environment variables or globals.
"""
