"""A missing test tool skips on a developer's machine and fails under CI=true."""

from __future__ import annotations

import shutil

import pytest

from .conftest import chromium, missing_tool


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException) as outcome:  # a Skipped must not escape as a skip of this test
        missing_tool("sshd is missing")
    assert outcome.type is pytest.fail.Exception and "CI=true but sshd is missing" in str(outcome.value)


def test_missing_tool_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(BaseException) as outcome:
        missing_tool("sshd is missing")
    assert outcome.type is pytest.skip.Exception and "sshd is missing" in str(outcome.value)


def test_a_missing_chromium_fails_the_browser_tests_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BaseException) as outcome:
        chromium()
    assert outcome.type is pytest.fail.Exception and "Chromium is not installed" in str(outcome.value)
