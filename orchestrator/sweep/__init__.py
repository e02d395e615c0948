"""Hyperparameter sweeps (`orchestrator tune`): a job spec plus a ``tune:`` section, run on Ray Tune.

Layout (imports go downward; nothing here imports Ray, torch or tensorflow at module level except
:mod:`trial` and :mod:`schedulers`; ``tuning`` and ``runner`` import Ray inside functions):

* :mod:`space`   -- the search-space expression parser (``loguniform(1e-4, 1e-1)``; literals only).
* :mod:`models`  -- the ``tune:`` section (pydantic) and :class:`SweepSpec`.
* :mod:`loader`  -- YAML -> SweepSpec with file:line and field paths in every error.
* :mod:`report`  -- pure functions: trial rows, leaderboard, budget saved, the best trial's spec.
* :mod:`hparams` -- TensorBoard hparams (tensorboard's own plugin protos, no TensorFlow).
* :mod:`plan`    -- the dry run; on Kubernetes the one RayJob a sweep becomes.
* :mod:`trial`   -- the Ray Tune trainable: one trial runs the job's own Ray Train trainer.
* :mod:`tuning`  -- the scheduler, search and concurrency handed to Ray Tune.
* :mod:`schedulers` -- ASHA that stops a trial's workers the moment it decides.
* :mod:`runner`  -- the sweep driver: Tuner / Tuner.restore, live table, store, exports.
"""
