import sys
from pathlib import Path

# Tests import their shared helpers as `tests.fixtures...`; make the repository root
# importable whatever directory pytest was started from and whatever import mode it uses.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Two xdist workers share two cores: one BLAS thread each avoids oversubscription that
# slows linear algebra by an order of magnitude. Must run before numpy is imported.
import os  # noqa: E402
import signal  # noqa: E402

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# every pass call in the tests also proves it left its input model untouched (passes/base.py)
os.environ.setdefault("TENSORFOLD_CHECK_PASSES", "1")

# A suite started as a background job (`make test &`, nohup) inherits Ctrl-C ignored, and Python
# keeps it ignored: the signal tests' SIGINT (and the CLI runs they start, which inherit it) would
# do nothing. Five of them failed that way in a clone run in the background, and passed in front.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
