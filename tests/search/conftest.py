import os
from pathlib import Path

import pytest

from tensorfold.demo import demo_model_path


@pytest.fixture
def demo_model() -> Path:
    return demo_model_path()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server .ci/run starts (tools/start_postgres.sh prints its URL)."""
    url = os.environ.get("TENSORFOLD_TEST_POSTGRES")
    if not url:
        pytest.skip(
            "no PostgreSQL: run `export TENSORFOLD_TEST_POSTGRES=$(tools/start_postgres.sh)` as root (.ci/run does)"
        )
    return url
