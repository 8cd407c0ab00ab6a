"""The ensemble stage's domain logic (no Dagster): a learned blend of every enabled classifier's out-of-fold
predictions, chosen and scored by nested cross-validation over the patient folds.

- :mod:`~hms_core.ensemble.members`: read every fold of every member, aligned row by row, with lineage;
- :mod:`~hms_core.ensemble.combiners`: mean, log-linear (non-negative weights + per-class bias), stacking; JSON;
- :mod:`~hms_core.ensemble.nested`: greedy member selection, combiner choice, nested CV, the final fit;
- :mod:`~hms_core.ensemble.calibration`: temperature + per-class bias, ECE, reliability bins;
- :mod:`~hms_core.ensemble.uncertainty`: entropies, vote-count buckets, patient bootstrap, the review list;
- :mod:`~hms_core.ensemble.build`: the stage end to end on files (and :func:`~hms_core.ensemble.build.load_ensemble`);
- :mod:`~hms_core.ensemble.report`: the self-contained HTML evaluation report;
- :mod:`~hms_core.ensemble.submission`: ``submission.csv`` and the Kaggle upload;
- :mod:`~hms_core.ensemble.trackers`: the report in MLflow and W&B; :mod:`hms_core.registry_mlflow`: the registry;
- :mod:`~hms_core.ensemble.testing`: constructed member outputs for tests and benchmarks.
"""
