import sys
from pathlib import Path

# Tests import their shared helpers as `tests.fixtures...`; make the repository root
# importable whatever directory pytest was started from and whatever import mode it uses.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
