"""Inspect core: data, models, inference, evaluation and similarity search.

Nothing in this package imports Streamlit; the pages in ``pages/`` are thin wrappers over it.
"""
