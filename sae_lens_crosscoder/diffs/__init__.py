"""Registered model diffs and the chain that runs them.

Modules: ``registry`` (``ModelDiff`` and its parts, ``register_diff`` / ``get_diff`` /
``list_diffs``), ``builtin`` (``gemma2-9b-it-vs-simpo``), ``steps`` (the cache / train /
analyse calls, swappable), ``pipeline`` (``run_diff``, the report), ``command`` (the CLI).
"""
