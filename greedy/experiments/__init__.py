"""Experiments over several runs: compare, sweep, and the frozen-subset experiment (seed 004)."""
