"""Scanning many models: ``scan_many`` on Ray (the optional ``distributed`` extra) or in turn.

One job per module: :mod:`~neuralcleanse.distributed.manifest` reads and checks the list of
models (a TOML/JSON manifest, a dict, or a folder of model files with one data file),
:mod:`~neuralcleanse.distributed.tasks` holds the work of one task (look at a model; scan a
chunk of its labels; search its borderline labels again), and
:mod:`~neuralcleanse.distributed.runner` schedules the tasks (on an embedded Ray, a Ray cluster,
or one after another in this process), merges each model's label chunks, has the borderline
labels confirmed, writes each model's report and the run's summary.

Nothing here imports a deep-learning framework, and ``ray`` is imported only when a run uses it.
"""
