"""The benchmark scripts of ``ssn``, run from the repository root as modules of this package:

    python -m benchmarks.lidc --help

Their shared helpers are in :mod:`benchmarks._common` (paths, timing, result files) and
:mod:`benchmarks._training` (the model table, threads, running ``ssn`` processes).
"""
