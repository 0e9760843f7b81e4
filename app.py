"""Inspect: a dashboard for quality inspectors over anomalib's PatchCore and EfficientAD.

This file is the frame and the router only: page setup, the shared sidebar (dataset, workspace,
device, running jobs) and ``st.navigation`` over the pages in ``pages/``. Each page is widgets and
layout; the logic is in ``core/``.

Run: ``streamlit run app.py`` (settings in ``.streamlit/config.toml``).
"""

from __future__ import annotations

import streamlit as st

from core.settings import ASSETS_DIR, get_settings
from pages import _common as ui

st.set_page_config(page_title="Inspect", page_icon=str(ASSETS_DIR / "icon.svg"), layout="wide")
st.logo(str(ASSETS_DIR / "logo.svg"), size="large", icon_image=str(ASSETS_DIR / "icon.svg"))
ui.inject_css()

PAGES = [
    st.Page("pages/inspection.py", title="Inspect", icon=":material/center_focus_strong:", url_path="inspect", default=True),
    st.Page("pages/inspection_history.py", title="History", icon=":material/history:", url_path="history"),
    st.Page("pages/model_comparison.py", title="Compare models", icon=":material/bar_chart:", url_path="compare"),
    st.Page("pages/similar_defects.py", title="Similar defects", icon=":material/image_search:", url_path="similar"),
]
page = st.navigation(PAGES)

settings = get_settings()
with st.sidebar:
    st.caption(
        f"**Data** `{settings.data_root}`  \n**Workspace** `{settings.workspace}`  \n**Device** {ui.device_summary()}"
    )
ui.sidebar_jobs()

page.run()
