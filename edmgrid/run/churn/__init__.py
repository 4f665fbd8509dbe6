"""``edmgrid optuna-churn``: search the stochastic sampler's S_churn, S_min, S_max, S_noise
(EDM Algorithm 2, §4) for one model and one base sampler with Optuna, ask/tell from one driver.

- ``search``: the search space (the solver's tunable fields and their ranges, ``Solver.TUNABLE``),
  a trial's job, the objective.
- ``study``: the Optuna study in its journal, with the settings it optimises, and its plots.
- ``driver``: asks trials, runs them on the scheduler of ``edmgrid run``, tells their results,
  re-evaluates the best ones.

The study lives in Optuna's ``JournalStorage`` at ``results/optuna/journal.log`` (readable by
optuna-dashboard); rerunning continues it. Trial 0 is the paper's Table 5 setting for the model's
family and trial 1 the deterministic sampler (S_churn = 0), so the search starts from the known
answers. Every evaluated trial is a row of the store with ``study``, ``trial`` and ``stage``
columns, and the study is recorded as a space of that name (``edmgrid compare --space STUDY``).
"""
