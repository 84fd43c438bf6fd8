"""The add-on as `make install-anaconda-addon` installed it (ADDON_DIR, set by
tests/anaconda.rs), and the pyanaconda stand-in beside it."""
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "stub"))
sys.path.insert(0, str(HERE))
ADDON_DIR = os.environ.get("ADDON_DIR")
if not ADDON_DIR:
    raise SystemExit("ADDON_DIR is not set: run these tests through `cargo test --test anaconda`")
sys.path.insert(0, ADDON_DIR)


import pytest  # noqa: E402


@pytest.fixture
def readme():
    return (HERE.parent.parent / "README.md").read_text(encoding="utf-8")
