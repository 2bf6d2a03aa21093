"""Integrations with other systems, each behind its own extra.

* :mod:`rvcfast.integrations.ray` -- convert whole corpora on a Ray cluster with Ray Data
  (``pip install "rvcfast[ray]"``).

Nothing is imported here: importing :mod:`rvcfast` never imports an integration's
dependencies.
"""
