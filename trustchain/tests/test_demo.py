"""The tour behind ``nox -s demo`` runs end to end and shows what it claims."""

from __future__ import annotations

import pytest

from trustchain import demo


def test_demo_tour(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--messages", "3"]) == 0
    out = capsys.readouterr().out
    assert "same on both sides: True" in out
    assert "(authenticated: True)" in out
    assert "3 round trips" in out
    assert "tampered record rejected: DecryptionFailed" in out
    assert "replayed record rejected: ReplayDetected" in out
    assert "after rekey: b'still talking'" in out
    assert "opened intact: True" in out
    assert "active version 2; v1 signature verifies as v1, new signature as v2" in out


def test_rejected_stops_the_tour_when_nothing_fails() -> None:
    with pytest.raises(SystemExit, match="accepted"):
        demo.rejected(ValueError, "forged thing", lambda: None)
