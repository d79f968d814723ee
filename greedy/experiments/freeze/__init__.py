"""The freezing experiment of seed 004: does a subset of weights move faster when the rest is frozen?

``run_freeze_experiment`` trains a baseline (everything trainable) and one run
per strategy (``masks.STRATEGIES``), all from the same initial weights, the same
sequence of mini-batches and the same optimiser settings, each through
``greedy.nn.fit.fit``, and records at every step, for every parameter subset of
every strategy (e.g. the trainable and the frozen part, also split per layer):

- ``dist``: L2 distance of the subset from its initial value, and ``rms`` =
  dist / sqrt(size);
- ``decrease``: the subset's cumulative first-order share of the loss
  decrease, sum over steps of -g . dw restricted to the subset (g the
  mini-batch gradient at the step, dw the update the optimiser made).

The baseline tracks the subsets of every strategy, so the same subset can be
compared between "trained alone" and "trained with everything else".

The strategies ``two-halves``, ``elastic`` and ``soft-share`` remove half of the
kernels instead of freezing them: two half-width models, trained in lockstep on
the same batches, uncoupled or coupled by elastic averaging or soft weight
sharing, then fused at the classifier (``coupling.train_halves``).

Outputs under ``out``: the run contract (config.json, metrics.jsonl with one
``step`` event per step and one ``eval`` event per evaluation, plus a
``coupling`` event per step of the half-width pairs, summary.json, model.npz of
the baseline, ``<strategy>-half-a/b.npz``), one ``<run>.csv`` per run, ``<run>_weights.npz``
with the trajectories of a sample of weights (the same number from every weight tensor), table.md
(``report.write_table``), and PNG plots when matplotlib is importable.

Modules: ``options`` (defaults, random streams), ``masks`` (frozen subsets),
``kernel_groups`` (Hessian groups), ``record`` (per-step rows), ``coupling``
(half-width models), ``run`` (the driver), ``report`` (summary, tables), ``plots``.
"""
from greedy.experiments.freeze.coupling import (COUPLINGS, Lockstep, couple_elastic, couple_soft_share, half_models,
                                                train_halves)
from greedy.experiments.freeze.options import DEFAULTS, EXPERIMENT_STRATEGIES, HALF_STRATEGIES, resolve_options
from greedy.experiments.freeze.report import seed_table, summarise, summary_table, write_table
from greedy.experiments.freeze.run import run_freeze_experiment, time_steps, train_run

__all__ = ["COUPLINGS", "DEFAULTS", "EXPERIMENT_STRATEGIES", "HALF_STRATEGIES", "Lockstep", "couple_elastic",
           "couple_soft_share", "half_models", "resolve_options", "run_freeze_experiment", "seed_table",
           "summarise", "summary_table", "time_steps", "train_halves", "train_run", "write_table"]
