"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from avcache.sample import sources as media_sources


@pytest.fixture(scope="session")
def sources() -> media_sources.Sources:
    """The real media the sample is rendered from; the test skips on a machine without the
    apt packages that ship them, saying which are missing."""
    try:
        return media_sources.find_sources()
    except media_sources.SampleError as error:
        pytest.skip(str(error))
