"""Continuous-EEG review: hours-long recordings scanned into a class-probability timeline (issue 15).

- :mod:`~hms_core.scanning.config`: the ``scan:`` section (:class:`ScanConfig`);
- :mod:`~hms_core.scanning.frontend`: the platform's preprocessing run once over continuous chunks, sliced per window;
- :mod:`~hms_core.scanning.predictors`: the package's engines, a workspace ensemble, the distilled model;
- :mod:`~hms_core.scanning.engine`: :func:`~hms_core.scanning.engine.scan_recording` (streamed, bounded memory);
- :mod:`~hms_core.scanning.distill`: the scanning model distilled from the ensemble;
- :mod:`~hms_core.scanning.events`, :mod:`~hms_core.scanning.outputs`, :mod:`~hms_core.scanning.plots`: events,
  summary files and the timeline picture.

Importing this package imports nothing heavy; import the modules.
"""
