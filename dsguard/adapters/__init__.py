"""Thin framework adapters; all decisions live in the pipeline and its checks."""
