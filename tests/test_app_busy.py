"""The Inspect page when too many large images are decoding: a one-line 'busy', then a retry works."""

from __future__ import annotations

import pytest

from core.data import image_io

pytestmark = pytest.mark.filterwarnings("ignore")


def test_busy_is_shown_and_not_kept(app_test, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test image (128 px) counts as large, one slot, held here: the page's decode cannot start.
    monkeypatch.setenv("INSPECT_LARGE_DECODE_PIXELS", "1000")
    monkeypatch.setenv("INSPECT_MAX_LARGE_DECODES", "1")
    monkeypatch.setenv("INSPECT_DECODE_WAIT_S", "0.2")
    slots = image_io._large_decode_slots()
    assert slots.acquire(timeout=5)
    try:
        at = app_test()
        at.run()
        at.radio(key="inspect_source").set_value("Test set").run()
        assert not at.exception, [e.value for e in at.exception]
        assert [e.value for e in at.error] == [image_io.BUSY_MESSAGE]
        assert not any("inspect-verdict" in m.value for m in at.markdown)
    finally:
        slots.release()
    at.run()  # the same image, moments later: inspected, the busy error was not remembered
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 0
    assert any("inspect-verdict" in m.value for m in at.markdown)
