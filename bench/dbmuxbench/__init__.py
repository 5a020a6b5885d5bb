"""dbmux benchmark harness: every figure a ratio against a baseline measured in the same run.

Entry point: `bench/run` (see docs/benchmarks.md). Scenarios live in `dbmuxbench/scenarios/`, one module each,
registered with `@scenario`; the harness discovers every module in that package.
"""
