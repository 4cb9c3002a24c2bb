"""Crystal structures and compositions -> invariant graphs and descriptors.

Library code: takes arguments, never reads params.yaml, environment variables or globals.
"""
