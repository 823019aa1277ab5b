"""Test-suite settings: hypothesis draws the same examples on every run, so CI is reproducible
(a failure found while developing is kept as an explicit example, not left to chance)."""

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile("deterministic")
