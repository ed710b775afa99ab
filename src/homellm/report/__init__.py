"""Shared report writing: matplotlib PNGs (Agg, no display) and self-contained HTML pages.

It knows nothing of where the figures come from; bench, data and train build on it.
"""
