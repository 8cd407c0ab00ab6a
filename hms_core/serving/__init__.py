"""The prediction path: uploads (:mod:`.inputs`), windows (:mod:`.windows`), one predictor shared by
the FastAPI service (:mod:`.app`, ``hms serve``) and ``hms predict`` (:mod:`.predictor`), errors that name the
problem (:mod:`.errors`). Only :mod:`.app` imports FastAPI; the predictor needs the package (onnxruntime) and
:mod:`hms_core.preprocess` (numpy + scipy.fft): the whole path runs without torch (tests/hms_core/test_torch_free.py).
"""
