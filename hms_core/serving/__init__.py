"""The prediction path without torch: uploads (:mod:`.inputs`), windows (:mod:`.windows`), one predictor shared by
the FastAPI service (:mod:`.app`, ``hms serve``) and ``hms predict`` (:mod:`.predictor`), errors that name the
problem (:mod:`.errors`). Importing this package imports neither torch nor FastAPI.
"""
