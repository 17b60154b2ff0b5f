"""Benchmarks: raw engines vs hand-written Prefect vs scalegroups (`make bench`)."""
