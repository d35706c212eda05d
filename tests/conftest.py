import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its dataset caches to a fresh folder, never to ~/.cache."""
    monkeypatch.setenv("SSN_CACHE_DIR", str(tmp_path_factory.mktemp("ssn_cache")))
