"""Reproducible training of the guardrails' classifiers (``make train-guardrails``); not imported at run time."""
