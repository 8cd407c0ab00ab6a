"""Monitoring in production: what the service and the scanner predicted, as data, and whether it still looks like
the training data.

- :mod:`hms_core.monitoring.log`: :class:`~hms_core.monitoring.log.PredictionLog`, the append-only prediction log
  (parquet files partitioned by day, a bounded queue and a background writer; never raises into a request).
- :mod:`hms_core.monitoring.reference`: :func:`~hms_core.monitoring.reference.build_reference`, the training
  distribution of the monitored features and of the ensemble's out-of-fold predictions (stored in the deployment
  package).
- :mod:`hms_core.monitoring.drift`: population stability index + two-sample KS per feature, class-mix drift.
- :mod:`hms_core.monitoring.quality`: KL and calibration against expert votes that arrive later.

Nothing here imports torch or dagster.
"""
