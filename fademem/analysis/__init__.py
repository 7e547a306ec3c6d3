"""Empirical analyses behind FadeMem's design (e.g. the spectral-decay study of Section 3.2)."""
