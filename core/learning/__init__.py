"""Learning from inspectors: versions, recalibration from feedback, memory-bank growth, drift.

Every change made here is a new registry version (:mod:`core.registry`), so it can be undone by
restoring an earlier one. Nothing here imports Streamlit; the pages reach it through
:mod:`core.services.feedback_loop`.
"""
