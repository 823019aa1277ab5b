"""Measured searches: sensitivity curves and the budget searches of prune and share, each
asking the judge (compressor.measure) about every candidate."""
