import sys
from pathlib import Path

# The datasets these tests share live in tests/publish_fixtures.py (tests/ has no conftest of its own).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from publish_fixtures import mixed_dataset, shapes_build  # noqa: E402,F401  (pytest fixtures)
