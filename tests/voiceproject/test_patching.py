"""The rule for patches of libraries: they name the versions they were written for."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from voiceproject import daphne_limits
from voiceproject.patching import require_versions, versions_untested


def test_the_installed_libraries_are_the_versions_the_patches_were_written_for():
    assert versions_untested(daphne_limits.TESTED_VERSIONS) == []


def test_another_version_is_refused_with_a_clear_error():
    with pytest.raises(ImproperlyConfigured) as refused:
        require_versions("voiceproject.daphne_limits", {"daphne": "<4"})
    message = str(refused.value)
    assert "voiceproject.daphne_limits" in message
    assert "daphne 4." in message
    assert "(tested: <4)" in message


def test_a_missing_library_is_refused():
    assert versions_untested({"no-such-library-here": ">=1"}) == [
        "no-such-library-here missing (tested: >=1)"
    ]
