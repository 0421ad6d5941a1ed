"""Bad input to every command, as a user meets it: the real `tensorfold` process.

One parametrize table per command. Every case runs the CLI in its own process (see "running"
below), in a fresh folder holding the demo model and a few small data files, and checks what a
user mistake must look like:

- exit status 2 (unless the case says otherwise),
- the last line of stderr is `error: ...` (naming the culprit, where the case says which), and
  there is no traceback,
- the whole output is short (one `error:` line, a little noise at most),
- every file that was there before is byte-for-byte unchanged,
- nothing new is left behind (no output file, no hidden `.NAME.<random>.tmp`), except what the case allows.

Then Ctrl-C and SIGTERM in the middle of `recover` and `search ranks`: 130 and 143, one `error:`
line, no temp file left.

The module imports nothing from tensorfold, so it still collects while the package is broken.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tensorfold" / "data" / "fmnist_cnn.onnx"  # 1x1x28x28 -> 10 classes
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT = 120  # seconds, per CLI run
MAX_LINES = 6  # non-empty lines of stdout + stderr a user mistake may print
MAX_CHARS = 1500

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
not_root = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")

# The demo model's factorizable layers, as `tensorfold search ranks` records them in a config.
LAYERS = {
    "/features/features.0/Conv": "Conv 32x1x3x3",
    "/features/features.4/Conv": "Conv 64x32x3x3",
    "/features/features.8/Conv": "Conv 128x64x3x3",
    "/classifier/Gemm": "Gemm 1152x10",
}


def _config(plan: dict[str, str]) -> str:
    """A rank configuration in the form `search ranks` writes; `plan` maps a layer to its YAML value."""
    lines = ["kind: tensorfold-ranks", "tensorfold: 0.1.0", "model:", "  file: model.onnx", "  layers:"]
    lines += [f"    {name}: {sig}" for name, sig in LAYERS.items()]
    lines += ["layers:"] + [f"  {name}: {plan.get(name, 'keep')}" for name in LAYERS]
    return "\n".join(lines) + "\n"


GOOD_CONFIG = _config(
    {"/features/features.8/Conv": "{method: tucker, ranks: [32, 24]}", "/classifier/Gemm": "{method: svd, ranks: [4]}"}
)


# --- the folder every case starts in -------------------------------------------------------------


def make_workspace(folder: Path) -> None:
    """model.onnx, teacher.onnx (copies of the demo), inputs and data files, a valid config."""
    rng = np.random.default_rng(0)
    data = DEMO.read_bytes()
    (folder / "model.onnx").write_bytes(data)
    (folder / "teacher.onnx").write_bytes(data)
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    np.savez(folder / "inputs.npz", x=x)
    np.save(folder / "inputs.npy", x)
    nan = x.copy()
    nan[0, 0, 3, 3] = np.nan
    np.savez(folder / "nan.npz", x=nan)
    np.savez(folder / "empty.npz", x=np.zeros((0, 1, 28, 28), np.float32))
    np.savez(folder / "calib.npz", x=rng.random((16, 1, 28, 28), dtype=np.float32))
    np.savez(
        folder / "train.npz",
        x=rng.random((64, 1, 28, 28), dtype=np.float32),
        y=rng.integers(0, 10, 64).astype(np.int64),
    )
    np.save(folder / "train.npy", rng.random((64, 1, 28, 28), dtype=np.float32))
    (folder / "config.yaml").write_text(GOOD_CONFIG)


# --- extra preparation for single cases (run in the case's folder, before the snapshot) ---------


def _write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def prep(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return prep


def _mkdir(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).mkdir(parents=True)


def _renamed_input(name: str, new: str) -> Callable[[Path], None]:
    """The demo model with its input renamed: a model that takes other inputs."""

    def prep(folder: Path) -> None:
        import onnx

        model = onnx.load(str(DEMO))
        old = model.graph.input[0].name
        model.graph.input[0].name = new
        for node in model.graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
        onnx.save(model, str(folder / name))

    return prep


def _npz(name: str, **arrays) -> Callable[[Path], None]:
    return lambda folder: np.savez(folder / name, **arrays)


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).symlink_to(target)


def _symlink_in(folder: str, name: str, target: str) -> Callable[[Path], None]:
    def prep(root: Path) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).symlink_to(target)

    return prep


def _read_only_folder(folder: Path) -> None:
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o555)


GARBAGE = bytes(range(256)) * 40
MANY = "1000000"  # threads, workers: far past what any machine can use
SEED_2_32 = str(2**32)  # numpy and torch seeds are 32-bit
GENOTYPE = json.dumps(
    {
        "genotype": {
            "normal": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [["skip_connect", 0], ["sep_conv_3x3", 2]]],
            "reduce": [[["avg_pool_3x3", 0], ["max_pool_3x3", 1]], [["skip_connect", 0], ["avg_pool_3x3", 2]]],
        }
    }
)


def _own(folder: str, *names: str) -> Callable[[Path], None]:
    """Files in `folder` as tensorfold lists what it wrote there (outputs.MANIFEST)."""

    def prep(root: Path) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / ".tensorfold.json").write_text(json.dumps({"written_by": "tensorfold", "files": list(names)}))

    return prep


def _all(*preps: Callable[[Path], None]) -> Callable[[Path], None]:
    def prep(folder: Path) -> None:
        for p in preps:
            p(folder)

    return prep


def _copy(src: str, dst: str) -> Callable[[Path], None]:
    def prep(folder: Path) -> None:
        (folder / dst).parent.mkdir(parents=True, exist_ok=True)
        (folder / dst).write_bytes((folder / src).read_bytes())

    return prep


def _model_edit(name: str, edit: Callable) -> Callable[[Path], None]:
    """A copy of the demo model, changed by `edit(model)` (onnx, not tensorfold)."""

    def prep(folder: Path) -> None:
        import onnx

        model = onnx.load(str(DEMO))
        edit(model)
        (folder / name).write_bytes(model.SerializeToString())

    return prep


def _short_weight(model) -> None:
    """A weight whose bytes do not fill its dims (a corrupt or hand-edited file)."""
    t = next(t for t in model.graph.initializer if len(t.raw_data) > 64)
    t.raw_data = t.raw_data[:-8]


def _attr_without_type(model) -> None:
    """What a flipped bit in an attribute's type field leaves: the file parses, the graph is wrong."""
    next(n for n in model.graph.node if n.attribute).attribute[0].type = 0


def _ir_99(model) -> None:
    model.ir_version = 99


def _input_32x32(model) -> None:
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], (32, 32)):
        d.dim_value = v


def _png_header(name: str, width: int, height: int) -> Callable[[Path], None]:
    """A PNG whose header declares width x height (no pixel data follows): a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return _write(name, png)


def _images(folder: str, count: int) -> Callable[[Path], None]:
    def prep(root: Path) -> None:
        from PIL import Image

        (root / folder).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for k in range(count):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / folder / f"{k:03d}.png")

    return prep


def _truncated(name: str, src: str) -> Callable[[Path], None]:
    def prep(folder: Path) -> None:
        data = (folder / src).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return prep


def _truncated_zip(name: str) -> Callable[[Path], None]:
    """The first half of a zip archive, as torch.save writes checkpoints: a write cut short."""

    def prep(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", bytes(range(256)) * 8)
            z.writestr("archive/data/0", b"\0" * 4096)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return prep


@dataclass
class Case:
    args: tuple[str, ...]
    prep: Callable[[Path], None] | None = None
    code: int = 2
    allow_new: tuple[str, ...] = ()  # glob patterns (relative paths) the case may leave behind
    max_seconds: float | None = None  # "fails before any work": refused within this time
    outside: tuple[str, ...] = ()  # absolute files outside the folder that must stay unchanged
    says: str | None = None  # the error line names the culprit (case-insensitive)


def case(id_: str, *args: str, marks=(), **kw) -> pytest.param:
    return pytest.param(Case(tuple(args), **kw), id=id_, marks=marks)


# --- running ------------------------------------------------------------------------------------
#
# A fresh interpreter spends 3-7 s importing onnx and torch (and torch._dynamo, which the first
# optimizer step pulls in) before tensorfold does anything: over ~160 cases, many minutes. So by
# default each case runs in a process forked from a "zygote" that has imported those third-party
# modules and nothing else: no tensorfold, no onnxruntime (whose import starts a thread; the zygote
# checks it is single-threaded, else every case runs fresh). The child chdirs into the case's
# folder, gets its own stdin, stdout and stderr, calls the console script's entry point
# (tensorfold.cli:main), runs the interpreter's exit steps and exits with the status a fresh
# `python -m tensorfold.cli` would; signals reach it as they would a fresh process.
# TENSORFOLD_TEST_FRESH=1 runs every case as `python -m tensorfold.cli ...` in a new interpreter
# instead (minutes; the reference behaviour).

PRELOAD = (
    "numpy",
    "onnx",
    "torch",
    "torch._dynamo",
    "optuna",
    "sqlalchemy",
    "scipy.linalg",
    "scipy.optimize",
    "tensorly",
    "yaml",
    "tqdm",
    "PIL.Image",
    "click",
    "rich.console",
    "rich.table",
)

ZYGOTE = r"""
import atexit, importlib, json, os, signal, sys, threading, traceback
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
    except Exception:
        pass
# what is imported from here on (tensorfold, onnxruntime) is compiled once for all the children, into
# a folder of the test session's: never beside the sources, even where PYTHONDONTWRITEBYTECODE is set
sys.pycache_prefix, sys.dont_write_bytecode = sys.argv[2], False
proto = os.fdopen(os.dup(1), "w", buffering=1)
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 1)
threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
proto.write(json.dumps({"ready": threads == 1 and "onnxruntime" not in sys.modules, "threads": threads}) + "\n")


def child(req):
    os.setpgid(0, 0)
    proto.close()
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        f = os.open(path, flags, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(req["cwd"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["tensorfold", *req["args"]]
    code = 0
    try:
        from tensorfold.cli import main
        main(args=req["args"], prog_name="tensorfold")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:            # as CPython does: traceback, exit steps, then die by SIGINT
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(req)
    proto.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    proto.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
"""


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TENSORFOLD_DEBUG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tensorfold.cli", *args]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Running:
    """One CLI run under way: its pid, and its result once it ends."""

    def __init__(self, pid: int, out: Path, err: Path, waiter: Callable[[float | None], int | None]):
        self.pid, self._out, self._err, self._waiter = pid, out, err, waiter
        self.start, self.returncode = time.perf_counter(), None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._waiter(0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = TIMEOUT) -> Result:
        """The result; a run still going after `timeout` seconds is killed and the test fails."""
        if self.returncode is None:
            self.returncode = self._waiter(timeout)
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.returncode = self._waiter(None)
            pytest.fail(f"still running after {timeout} s; stderr:\n    {_tail(self.stderr())}")
        return Result(
            self.returncode, self._out.read_text(errors="replace"), self.stderr(), time.perf_counter() - self.start
        )

    def stderr(self) -> str:
        return self._err.read_text(errors="replace") if self._err.exists() else ""


class Launcher:
    """Starts CLI runs: forked from the zygote, or fresh interpreters (TENSORFOLD_TEST_FRESH=1)."""

    def __init__(self, logs: Path, pycache: Path):
        self.logs, self.pycache, self.count, self.zygote = logs, pycache, 0, None
        if os.environ.get("TENSORFOLD_TEST_FRESH") != "1" and hasattr(os, "fork"):
            self.zygote = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE, ",".join(PRELOAD), str(pycache)],
                env=cli_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                cwd=logs,
            )
            hello = self._read(120)
            if not (hello and hello.get("ready")):  # threads after the imports: forking is not safe
                self.close()

    def _read(self, timeout: float | None) -> dict | None:
        if timeout is not None and not select.select([self.zygote.stdout], [], [], timeout)[0]:
            return None
        line = self.zygote.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return json.loads(line)

    def start(self, folder: Path, args) -> Running:
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        if self.zygote is None:
            with open(out, "w") as fo, open(err, "w") as fe:
                proc = subprocess.Popen(
                    cli(*args),
                    cwd=folder,
                    stdout=fo,
                    stderr=fe,
                    stdin=subprocess.DEVNULL,
                    env=cli_env(),
                    start_new_session=True,
                )

            def waiter(timeout):
                try:
                    return proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    return None

            return Running(proc.pid, out, err, waiter)
        self.zygote.stdin.write(
            json.dumps({"cwd": str(folder), "args": list(args), "out": str(out), "err": str(err)}) + "\n"
        )
        pid = self._read(None)["pid"]

        def waiter(timeout):
            reply = self._read(timeout)
            return None if reply is None else reply["status"]

        return Running(pid, out, err, waiter)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.stdin.close()
            self.zygote.wait(timeout=30)
            self.zygote = None


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    launch = Launcher(tmp_path_factory.mktemp("cli-logs"), tmp_path_factory.mktemp("pycache"))
    yield launch
    launch.close()


def _tail(text, n: int = 3) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n    ".join(lines[-n:]) if lines else "(empty)"


# --- checking ------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of a file, 'dir', or 'link -> target'; folders recursed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                try:
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError as exc:
                    out[rel] = f"unreadable: {exc.strerror}"
    return out


def _hash_outside(paths) -> dict[str, str]:
    out = {}
    for p in paths:
        try:
            out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        except OSError as exc:
            out[p] = f"missing: {exc.strerror}"
    return out


def is_temp(rel: str) -> bool:
    name = Path(rel).name
    return name.endswith(".tmp") or (name.startswith(".") and "tmp" in name)


def check_user_error(launcher: Launcher, folder: Path, c: Case) -> None:
    """Run the case and list every way it differs from a clean user-mistake failure."""
    make_workspace(folder)
    if c.prep is not None:
        c.prep(folder)
    before, outside_before = snapshot(folder), _hash_outside(c.outside)
    proc = launcher.start(folder, c.args).wait()
    seconds = proc.seconds
    after, outside_after = snapshot(folder), _hash_outside(c.outside)

    problems = []
    if proc.returncode != c.code:
        problems.append(f"exit status {proc.returncode}, expected {c.code}")
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if not err_lines or not err_lines[-1].startswith("error: "):
        problems.append("the last line of stderr is not 'error: ...'")
    elif c.says and c.says.lower() not in err_lines[-1].lower():
        problems.append(f"the error line does not mention {c.says!r}")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        problems.append("a traceback was printed")
    all_lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if len(all_lines) > MAX_LINES or len(proc.stdout) + len(proc.stderr) > MAX_CHARS:
        problems.append(f"{len(all_lines)} lines / {len(proc.stdout) + len(proc.stderr)} characters of output")
    changed = sorted(p for p in before if after.get(p) != before[p])
    if changed:
        problems.append(f"changed or removed: {changed}")
    changed_outside = sorted(p for p in outside_before if outside_after[p] != outside_before[p])
    if changed_outside:
        problems.append(f"changed outside the folder: {changed_outside}")
    new = sorted(p for p in after if p not in before and not any(fnmatch.fnmatch(p, g) for g in c.allow_new))
    temps = [p for p in new if is_temp(p)]
    if temps:
        problems.append(f"temp files left: {temps}")
    if new and new != temps:
        problems.append(f"new files left: {[p for p in new if p not in temps]}")
    if c.max_seconds is not None and seconds > c.max_seconds:
        problems.append(f"took {seconds:.1f} s, expected to be refused within {c.max_seconds:g} s")
    assert not problems, (
        f"tensorfold {' '.join(c.args)}\n  "
        + "\n  ".join(problems)
        + f"\n  exit {proc.returncode}; stderr tail:\n    {_tail(proc.stderr)}"
        + (f"\n  stdout tail:\n    {_tail(proc.stdout)}" if proc.stdout.strip() else "")
    )


# --- optimize ------------------------------------------------------------------------------------

OPT = ("optimize", "model.onnx")
FAST = ("--method", "tucker", "--rank", "4")  # cheap enough when the bad value slips through

OPTIMIZE = [
    case("o-is-model", *OPT, "-o", "model.onnx", says="model.onnx"),
    case("o-is-model-other-spelling", *OPT, "-o", "./sub/../model.onnx", prep=_mkdir("sub"), says="model.onnx"),
    case("o-is-symlink-to-model", *OPT, "-o", "link.onnx", prep=_symlink("link.onnx", "model.onnx"), says="link.onnx"),
    case("o-is-inputs", *OPT, "-o", "inputs.npz", "--inputs", "inputs.npz", says="inputs.npz"),
    case("o-is-config", *OPT, "-o", "config.yaml", "--config", "config.yaml", says="config.yaml"),
    case("o-is-calibration", *OPT, "-o", "calib.npz", "--calibration", "calib.npz", *FAST, says="calib.npz"),
    case("o-is-folder", *OPT, "-o", "outdir", prep=_mkdir("outdir"), says="outdir"),
    case("o-in-missing-folder", *OPT, "-o", "nowhere/out.onnx", *FAST, says="nowhere"),
    case("o-in-read-only-folder", *OPT, "-o", "ro/out.onnx", *FAST, prep=_read_only_folder, marks=not_root, says="ro/"),
    # as root, folder permissions do not apply: /proc and /sys refuse new files whoever asks
    case("o-is-proc-version", *OPT, "-o", "/proc/version", *FAST, outside=("/proc/version",), says="/proc/"),
    case("o-in-proc", *OPT, "-o", "/proc/tensorfold-test.onnx", *FAST, says="/proc/"),
    case("o-in-sysfs", *OPT, "-o", "/sys/kernel/tensorfold-test.onnx", *FAST, says="/sys/kernel/"),
    case(
        "model-garbage",
        "optimize",
        "garbage.onnx",
        "-o",
        "out.onnx",
        prep=_write("garbage.onnx", GARBAGE),
        says="garbage.onnx",
    ),
    case("model-empty", "optimize", "empty.onnx", "-o", "out.onnx", prep=_write("empty.onnx", b""), says="empty.onnx"),
    case("model-missing", "optimize", "missing.onnx", "-o", "out.onnx", says="missing.onnx"),
    case(
        "include-matches-nothing", *OPT, "-o", "out.onnx", "--include", "nomatch*", says="matches none of the model's"
    ),
    case("model-is-folder", "optimize", "adir", "-o", "out.onnx", prep=_mkdir("adir"), says="adir: not a file"),
    # the output inside that folder: still the folder named as what it is, not as an input folder
    case(
        "model-is-folder-holding-o",
        "optimize",
        "adir",
        "-o",
        "adir/out.onnx",
        prep=_mkdir("adir"),
        says="adir: not a file",
    ),
    case("inputs-npy", *OPT, "-o", "out.onnx", "--inputs", "inputs.npy", *FAST, says="inputs.npy"),
    case("inputs-nan", *OPT, "-o", "out.onnx", "--inputs", "nan.npz", *FAST, says="nan.npz"),
    case("inputs-zero-samples", *OPT, "-o", "out.onnx", "--inputs", "empty.npz", *FAST, says="empty.npz"),
    case(
        "inputs-wrong-shape",
        *OPT,
        "-o",
        "out.onnx",
        "--inputs",
        "wrong.npz",
        *FAST,
        prep=_npz("wrong.npz", x=np.zeros((2, 3, 32, 32), np.float32)),
        says="has shape [2, 3, 32, 32]; the model takes [batch, 1, 28, 28]",
    ),
    case(
        "inputs-integers",
        *OPT,
        "-o",
        "out.onnx",
        "--inputs",
        "int.npz",
        *FAST,
        prep=_npz("int.npz", x=np.zeros((2, 1, 28, 28), np.int64)),
        says="int.npz: input 'input' is int64; the model takes float32",
    ),
    case("shape-fixed-dim", *OPT, "-o", "out.onnx", "--shape", "input:1,3,28,28", *FAST, says="dim 1 is fixed at 1"),
    case(
        "inputs-garbage",
        *OPT,
        "-o",
        "out.onnx",
        "--inputs",
        "garbage.npz",
        *FAST,
        prep=_write("garbage.npz", GARBAGE),
        says="garbage.npz",
    ),
    case(
        "inputs-not-numpy",  # numpy reads such a file as a pickle: the error said "object arrays"
        *OPT,
        "-o",
        "out.onnx",
        "--inputs",
        "model-copy.onnx",
        *FAST,
        prep=_write("model-copy.onnx", GARBAGE),
        says="not a NumPy file",
    ),
    case("inputs-is-folder", *OPT, "-o", "out.onnx", "--inputs", "adir", *FAST, prep=_mkdir("adir"), says="adir"),
    case("calibration-nan", *OPT, "-o", "out.onnx", "--calibration", "nan.npz", *FAST, says="nan.npz"),
    case("calibration-zero-samples", *OPT, "-o", "out.onnx", "--calibration", "empty.npz", *FAST, says="empty.npz"),
    case("rank-negative", *OPT, "-o", "out.onnx", "--rank", "-3", says="--rank"),
    case("rank-zero", *OPT, "-o", "out.onnx", "--rank", "0", says="--rank"),
    case("ratio-below-1", *OPT, "-o", "out.onnx", "--ratio", "0.5", says="--ratio"),
    case("ratio-nan", *OPT, "-o", "out.onnx", "--ratio", "nan", says="--ratio"),
    case("energy-above-1", *OPT, "-o", "out.onnx", "--energy", "1.5", says="--energy"),
    case("energy-zero", *OPT, "-o", "out.onnx", "--energy", "0", says="--energy"),
    case("threads-negative", *OPT, "-o", "out.onnx", *FAST, "--threads", "-1", says="--threads"),
    case(
        "threads-negative-hardware-aware",
        *OPT,
        "-o",
        "out.onnx",
        *FAST,
        "--hardware-aware",
        "--threads",
        "-1",
        says="--threads",
    ),
    case("seed-negative", *OPT, "-o", "out.onnx", *FAST, "--seed", "-1", says="--seed"),
    case("holdout-above-1", *OPT, "-o", "out.onnx", "--calibration", "calib.npz", "--holdout", "1.5", says="--holdout"),
    case(
        "config-rank-list-wrong-length",
        *OPT,
        "-o",
        "out.onnx",
        "--config",
        "bad.yaml",
        prep=_write("bad.yaml", _config({"/features/features.4/Conv": "{method: tucker, ranks: [3]}"})),
        says="bad.yaml",
    ),
    case(
        "config-rank-list-too-long",
        *OPT,
        "-o",
        "out.onnx",
        "--config",
        "bad.yaml",
        prep=_write("bad.yaml", _config({"/classifier/Gemm": "{method: svd, ranks: [3, 4, 5]}"})),
        says="bad.yaml",
    ),
    case(
        "config-ranks-strings",
        *OPT,
        "-o",
        "out.onnx",
        "--config",
        "bad.yaml",
        prep=_write("bad.yaml", _config({"/features/features.4/Conv": "{method: tucker, ranks: [a, b]}"})),
        says="bad.yaml",
    ),
    case(
        "config-garbage",
        *OPT,
        "-o",
        "out.onnx",
        "--config",
        "bad.yaml",
        prep=_write("bad.yaml", GARBAGE),
        says="bad.yaml",
    ),
    case("config-missing", *OPT, "-o", "out.onnx", "--config", "missing.yaml", says="missing.yaml"),
    case("o-trailing-slash", *OPT, "-o", "newdir/", *FAST, says="newdir/"),
    case("threads-million", *OPT, "-o", "out.onnx", *FAST, "--threads", MANY, max_seconds=30, says="--threads"),
    case(
        "threads-million-hardware-aware",
        *OPT,
        "-o",
        "out.onnx",
        *FAST,
        "--hardware-aware",
        "--threads",
        MANY,
        max_seconds=30,
        says="--threads",
    ),
    case("seed-2-32", *OPT, "-o", "out.onnx", *FAST, "--seed", SEED_2_32, says="--seed"),
    case(
        "calibration-overflows-float32",
        *OPT,
        "-o",
        "out.onnx",
        "--calibration",
        "big.npz",
        *FAST,
        prep=_npz("big.npz", x=np.full((8, 1, 28, 28), 1e300)),
        says="big.npz",
    ),
    case(
        "calibration-truncated-npz",
        *OPT,
        "-o",
        "out.onnx",
        "--calibration",
        "cut.npz",
        *FAST,
        prep=_truncated("cut.npz", "calib.npz"),
        says="cut.npz",
    ),
    case(
        "model-weight-short-of-its-dims",
        "optimize",
        "bad.onnx",
        "-o",
        "out.onnx",
        *FAST,
        prep=_model_edit("bad.onnx", _short_weight),
        says="bad.onnx",
    ),
    case(
        "model-attribute-without-type",
        "optimize",
        "bad.onnx",
        "-o",
        "out.onnx",
        *FAST,
        prep=_model_edit("bad.onnx", _attr_without_type),
        says="bad.onnx",
    ),
]


@pytest.mark.parametrize("c", OPTIMIZE)
def test_optimize(launcher, tmp_path, c):
    try:
        check_user_error(launcher, tmp_path, c)
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)


# --- verify, inspect, profile --------------------------------------------------------------------

VER = ("verify", "model.onnx", "teacher.onnx")

VERIFY = [
    case("candidate-missing", "verify", "model.onnx", "missing.onnx", says="missing.onnx"),
    case(
        "reference-garbage",
        "verify",
        "garbage.onnx",
        "model.onnx",
        prep=_write("garbage.onnx", GARBAGE),
        says="garbage.onnx",
    ),
    case("inputs-nan", *VER, "--inputs", "nan.npz", says="nan.npz"),
    case("inputs-zero-samples", *VER, "--inputs", "empty.npz", says="empty.npz"),
    case("inputs-npy", *VER, "--inputs", "inputs.npy", says="inputs.npy"),
    case("inputs-missing", *VER, "--inputs", "missing.npz", says="missing.npz"),
    case(
        "inputs-wrong-channels",
        *VER,
        "--inputs",
        "rgb.npz",
        prep=_npz("rgb.npz", x=np.zeros((2, 3, 28, 28), np.float32)),
        says="rgb.npz: input 'input' has shape [2, 3, 28, 28]; the model takes [batch, 1, 28, 28]",
    ),
]


@pytest.mark.parametrize("c", VERIFY)
def test_verify(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


INSPECT = [
    case("model-missing", "inspect", "missing.onnx", says="missing.onnx"),
    case("model-garbage", "inspect", "garbage.onnx", prep=_write("garbage.onnx", GARBAGE), says="garbage.onnx"),
    case("calibration-missing", "inspect", "model.onnx", "--calibration", "missing.npz", says="missing.npz"),
    case("calibration-nan", "inspect", "model.onnx", "--calibration", "nan.npz", says="nan.npz"),
    case("shape-unknown-input", "inspect", "model.onnx", "--shape", "other:1,2", says="--shape"),
    case("model-ir-version-99", "inspect", "bad.onnx", prep=_model_edit("bad.onnx", _ir_99), says="IR version"),
    case(
        "model-attribute-without-type",
        "inspect",
        "bad.onnx",
        prep=_model_edit("bad.onnx", _attr_without_type),
        says="bad.onnx",
    ),
    case(
        "model-weight-short-of-its-dims",
        "inspect",
        "bad.onnx",
        prep=_model_edit("bad.onnx", _short_weight),
        says="bad.onnx",
    ),
]


@pytest.mark.parametrize("c", INSPECT)
def test_inspect(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


PROF = ("profile", "model.onnx", "--runs", "2", "--warmup", "0")

PROFILE = [
    case("top-negative", *PROF, "--top", "-1", says="--top"),
    case("threads-negative", *PROF, "--threads", "-2", says="--threads"),
    case("runs-zero", "profile", "model.onnx", "--runs", "0", says="--runs"),
    case("batch-zero", *PROF, "--batch", "0", says="--batch"),
    case("batch-huge", *PROF, "--batch", "100000000", says="--batch"),
    case("warmup-negative", "profile", "model.onnx", "--runs", "2", "--warmup", "-1", says="--warmup"),
    case("shape-zero-dim", *PROF, "--shape", "input:0,1,28,28", says="--shape"),
    case("model-missing", "profile", "missing.onnx", says="missing.onnx"),
    case("compare-missing", *PROF, "--compare", "missing.onnx", says="missing.onnx"),
    case("device-unknown", *PROF, "--device", "rx590", says="rx590"),
    case(
        "compare-other-inputs",
        *PROF,
        "--compare",
        "other.onnx",
        prep=_renamed_input("other.onnx", "pixels"),
        says="--compare other.onnx takes the inputs ['pixels']",
    ),
    case("threads-million", *PROF, "--threads", MANY, max_seconds=30, says="--threads"),
]


@pytest.mark.parametrize("c", PROFILE)
def test_profile(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# --- recover -------------------------------------------------------------------------------------

REC = ("recover", "model.onnx")
SMALL = ("--data", "train.npz", "--max-steps", "2")
X64 = np.zeros((64, 1, 28, 28), np.float32)

RECOVER = [
    case("o-is-teacher", *REC, "-o", "teacher.onnx", "--teacher", "teacher.onnx", *SMALL, says="teacher.onnx"),
    case("o-is-data", *REC, "-o", "train.npz", *SMALL, says="train.npz"),
    case(
        "classes-without-image-folder",  # was ignored silently
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--data",
        "train.npz",
        "--classes",
        "a,b",
        "--max-steps",
        "2",
        says="--classes names the class subfolders of an image folder",
    ),
    case(
        "data-integers",  # pixels as int64: the trainer's Conv failed on a long tensor
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--data",
        "int.npz",
        "--max-steps",
        "2",
        prep=_npz("int.npz", x=np.zeros((8, 1, 28, 28), np.int64)),
        says="the samples are int64; the model takes float32",
    ),
    # refused before training: training makes OUT.ckpt/ first, so no new folder may appear
    case(
        "o-is-folder",
        *REC,
        "-o",
        "outdir",
        "--data",
        "train.npz",
        "--epochs",
        "50",
        prep=_mkdir("outdir"),
        max_seconds=30,
        says="outdir",
    ),
    case("o-in-missing-folder", *REC, "-o", "nowhere/out.onnx", *SMALL, max_seconds=30, says="nowhere"),
    # the user's data is required: no data set is taken for them
    case("no-data", *REC, "-o", "out.onnx", "--max-steps", "2", says="--data"),
    case("lr-nan", *REC, "-o", "out.onnx", "--lr", "nan", *SMALL, says="--lr"),
    case("lr-inf", *REC, "-o", "out.onnx", "--lr", "inf", *SMALL, says="--lr"),
    case("alpha-above-1", *REC, "-o", "out.onnx", "--alpha", "2", *SMALL, says="--alpha"),
    case("batch-size-zero", *REC, "-o", "out.onnx", "--batch-size", "0", *SMALL, says="--batch-size"),
    case("generations-zero", *REC, "-o", "out.onnx", "--generations", "0", *SMALL, says="--generations"),
    case("normalize-not-numbers", *REC, "-o", "out.onnx", "--normalize", "a,b", *SMALL, says="--normalize"),
    case(
        "teacher-weights-not-numbers",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--teacher-weights",
        "a,b",
        *SMALL,
        says="--teacher-weights",
    ),
    case(
        "teacher-weights-count-mismatch",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--teacher-weights",
        "0.7,0.3",
        *SMALL,
        says="--teacher-weights",
    ),
    case(
        "data-x-y-lengths-differ",
        *REC,
        "-o",
        "out.onnx",
        "--max-steps",
        "2",
        "--data",
        "xy.npz",
        prep=_npz("xy.npz", x=X64, y=np.zeros(50, np.int64)),
        says="xy.npz",
    ),
    case(
        "labels-out-of-range",
        *REC,
        "-o",
        "out.onnx",
        "--max-steps",
        "2",
        "--data",
        "y57.npz",
        prep=_npz("y57.npz", x=X64, y=np.full(64, 57, np.int64)),
        says="57",
    ),
    case(
        "labels-negative",
        *REC,
        "-o",
        "out.onnx",
        "--max-steps",
        "2",
        "--data",
        "yneg.npz",
        prep=_npz("yneg.npz", x=X64, y=np.full(64, -1, np.int64)),
        says="yneg.npz",
    ),
    case("data-npy", *REC, "-o", "out.onnx", "--data", "train.npy", "--max-steps", "2", says="train.npy"),
    case(
        "data-zero-samples",
        *REC,
        "-o",
        "out.onnx",
        "--data",
        "empty.npz",
        "--teacher",
        "teacher.onnx",
        "--max-steps",
        "2",
        says="empty.npz",
    ),
    case(
        "data-nan",
        *REC,
        "-o",
        "out.onnx",
        "--data",
        "nan.npz",
        "--teacher",
        "teacher.onnx",
        "--max-steps",
        "2",
        says="nan.npz",
    ),
    case(
        "data-garbage",
        *REC,
        "-o",
        "out.onnx",
        "--data",
        "garbage.npz",
        "--max-steps",
        "2",
        prep=_write("garbage.npz", GARBAGE),
        says="garbage.npz",
    ),
    case(
        "resume-torn-checkpoint",
        *REC,
        "-o",
        "out.onnx",
        *SMALL,
        "--resume",
        prep=_write("out.onnx.ckpt/last.pt", GARBAGE),
        says="last.pt",
    ),
    case(
        "resume-truncated-checkpoint",
        *REC,
        "-o",
        "out.onnx",
        *SMALL,
        "--resume",
        prep=_truncated_zip("out.onnx.ckpt/last.pt"),
        says="last.pt",
    ),
    case("resume-no-checkpoint", *REC, "-o", "out.onnx", *SMALL, "--resume", says="--resume"),
    case("max-steps-negative", *REC, "-o", "out.onnx", "--data", "train.npz", "--max-steps", "-1", says="--max-steps"),
    case("teacher-missing", *REC, "-o", "out.onnx", "--teacher", "missing.onnx", *SMALL, says="missing.onnx"),
    case("peer-missing", *REC, "-o", "out.onnx", "--peer", "missing.onnx", *SMALL, says="missing.onnx"),
    case(
        "model-garbage",
        "recover",
        "garbage.onnx",
        "-o",
        "out.onnx",
        *SMALL,
        prep=_write("garbage.onnx", GARBAGE),
        says="garbage.onnx",
    ),
    case("o-trailing-slash", *REC, "-o", "newdir/", *SMALL, says="newdir/"),
    case("threads-million", *REC, "-o", "out.onnx", *SMALL, "--threads", MANY, max_seconds=30, says="--threads"),
    case("workers-100000", *REC, "-o", "out.onnx", *SMALL, "--workers", "100000", max_seconds=30, says="--workers"),
    case("seed-2-32", *REC, "-o", "out.onnx", *SMALL, "--seed", SEED_2_32, says="--seed"),
    case("normalize-zero-std", *REC, "-o", "out.onnx", "--normalize", "0.5,0", *SMALL, says="--normalize"),
    case(
        "data-object-array",
        *REC,
        "-o",
        "out.onnx",
        "--max-steps",
        "2",
        "--data",
        "obj.npz",
        prep=_npz("obj.npz", x=np.array([{"a": 1}] * 4, dtype=object)),
        says="obj.npz",
    ),
    case(
        "data-truncated-npz",
        *REC,
        "-o",
        "out.onnx",
        "--max-steps",
        "2",
        "--data",
        "cut.npz",
        prep=_truncated("cut.npz", "train.npz"),
        says="cut.npz",
    ),
    case(
        "data-image-decompression-bomb",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--data",
        "imgs",
        prep=_png_header("imgs/bomb.png", 20000, 20000),
        says="bomb.png",
    ),
    case(
        "data-image-links-outside",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--max-steps",
        "2",
        "--workers",
        "0",
        "--data",
        "imgs",
        prep=_all(_png_header("elsewhere/a.png", 28, 28), _symlink_in("imgs", "a.png", "../elsewhere/a.png")),
        says="outside",
    ),
    # one image that cannot be read among good ones: the run stops, leaving no checkpoint behind
    case(
        "data-bad-image-mid-run",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--max-steps",
        "20",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--data",
        "imgs",
        prep=_all(_images("imgs", 40), _write("imgs/zzz.png", GARBAGE)),
        says="zzz.png",
    ),
    case(
        "teacher-other-input-shape",
        *REC,
        "-o",
        "out.onnx",
        "--teacher",
        "t32.onnx",
        *SMALL,
        prep=_model_edit("t32.onnx", _input_32x32),
        says="t32.onnx",
    ),
    # a checkpoint folder holding a last.pt tensorfold did not write (a symlink to another run's folder)
    case(
        "checkpoint-folder-links-to-foreign-files",
        *REC,
        "-o",
        "out.onnx",
        *SMALL,
        prep=_all(
            _write("other/last.pt", GARBAGE), _write("other/best.pt", GARBAGE), _symlink("out.onnx.ckpt", "other")
        ),
        says="did not write",
    ),
    case(
        "resume-empty-checkpoint",
        *REC,
        "-o",
        "out.onnx",
        *SMALL,
        "--resume",
        prep=_all(_write("out.onnx.ckpt/last.pt", b""), _own("out.onnx.ckpt", "last.pt")),
        says="last.pt",
    ),
    # the loss turns NaN before the first training checkpoint: no model, and no checkpoint either
    # (the step-0 evaluation's best.pt goes too, as the message says)
    case(
        "loss-nan-before-a-checkpoint",
        *REC,
        "-o",
        "out.onnx",
        "--data",
        "train.npz",
        "--max-steps",
        "5",
        "--batch-size",
        "8",
        "--lr",
        "1e30",
        says="no training checkpoint",
    ),
]


@pytest.mark.parametrize("c", RECOVER)
def test_recover(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# --- search ranks, search nas --------------------------------------------------------------------

RANKS = ("search", "ranks", "model.onnx", "--n-trials", "1")


def _model_named(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(DEMO.read_bytes())


SEARCH_RANKS = [
    case("timeout-negative", *RANKS, "--timeout", "-1", says="--timeout"),
    case("threads-negative", *RANKS, "--threads", "-1", says="--threads"),
    case("n-trials-zero", "search", "ranks", "model.onnx", "--n-trials", "0", says="--n-trials"),
    case("max-error-negative", *RANKS, "--max-error", "-1", says="--max-error"),
    case("population-zero", *RANKS, "--population", "0", says="--population"),
    # the front's models are written as point-K.onnx: an input of that name there must not be overwritten
    case(
        "output-dir-holds-model-point-0",
        "search",
        "ranks",
        "point-0.onnx",
        "--n-trials",
        "1",
        "-o",
        ".",
        prep=_model_named("point-0.onnx"),
        says="point-0.onnx",
    ),
    case(
        "output-dir-holds-model-point-1",
        "search",
        "ranks",
        "point-1.onnx",
        "--n-trials",
        "1",
        "-o",
        ".",
        prep=_model_named("point-1.onnx"),
        says="point-1.onnx",
    ),
    case("output-dir-is-file", *RANKS, "-o", "inputs.npz", says="inputs.npz"),
    case(
        "storage-sqlite-garbage",
        *RANKS,
        "--storage",
        "sqlite:///corrupt.db",
        prep=_write("corrupt.db", GARBAGE),
        says="corrupt.db",
    ),
    case(
        "storage-journal-garbage",
        *RANKS,
        "--storage",
        "journal:corrupt.log",
        prep=_write("corrupt.log", GARBAGE),
        says="corrupt.log",
    ),
    case("storage-sqlite-missing-folder", *RANKS, "--storage", "sqlite:///nowhere/s.db", says="nowhere"),
    case("storage-not-a-url", *RANKS, "--storage", "corrupt.db", says="--storage"),
    case("objectives-unknown", *RANKS, "--objectives", "params,speed", says="speed"),
    case("methods-unknown", *RANKS, "--methods", "svd,qr", says="qr"),
    case("inputs-nan", *RANKS, "--inputs", "nan.npz", says="nan.npz"),
    case(
        "data-missing",
        *RANKS,
        "--objectives",
        "params,accuracy",
        "--data",
        "missing.npz",
        "--recover-steps",
        "0",
        says="missing.npz",
    ),
    case("model-missing", "search", "ranks", "missing.onnx", "--n-trials", "1", says="missing.onnx"),
    # a user's own files under the names the front is written as: never replaced, never deleted
    case(
        "output-dir-holds-foreign-front",
        *RANKS,
        "-o",
        "pd",
        prep=_all(_write("pd/point-9.onnx", GARBAGE), _write("pd/front.json", "{}")),
        max_seconds=30,
        says="front.json",
    ),
    case(
        "storage-journal-torn-last-line",
        *RANKS,
        "--storage",
        "journal:torn.log",
        prep=_write("torn.log", '{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\n{"op_code":4,"wor'),
        says="truncate",
    ),
    case("threads-million", *RANKS, "--threads", MANY, max_seconds=30, says="--threads"),
    case("seed-2-32", *RANKS, "--seed", SEED_2_32, says="--seed"),
]


@pytest.mark.parametrize("c", SEARCH_RANKS)
def test_search_ranks(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# small enough that a case whose bad value slips through still ends in seconds
NAS = (
    "search",
    "nas",
    "--train-size",
    "64",
    "--val-size",
    "32",
    "--proxy-steps",
    "1",
    "--final-steps",
    "1",
    "--population",
    "2",
    "--channels",
    "4",
    "--layers",
    "3",
    "--nodes",
    "2",
)
NAS_BUDGET = ("--budget-minutes", "0.02")

SEARCH_NAS = [
    case("budget-negative", *NAS, "--budget-minutes", "-1", says="--budget-minutes"),
    case("budget-nan", *NAS, "--budget-minutes", "nan", says="--budget-minutes"),
    case("threads-negative", *NAS, *NAS_BUDGET, "--threads", "-1", marks=needs_fmnist, says="--threads"),
    case("population-zero", *NAS, *NAS_BUDGET, "--population", "0", marks=needs_fmnist, says="--population"),
    case("max-latency-zero", *NAS, *NAS_BUDGET, "--max-latency", "0", says="--max-latency"),
    case("objectives-unknown", *NAS, *NAS_BUDGET, "--objectives", "accuracy,speed", says="speed"),
    case("data-missing", *NAS, *NAS_BUDGET, "--data", "missing.npz", says="missing.npz"),
    case("genotype-garbage", *NAS, "--genotype", "g.json", prep=_write("g.json", GARBAGE), says="g.json"),
    case("genotype-missing", *NAS, "--genotype", "missing.json", says="missing.json"),
    case("o-in-missing-folder", *NAS, *NAS_BUDGET, "-o", "nowhere/nas.onnx", says="nowhere"),
    case(
        "teacher-garbage",
        *NAS,
        *NAS_BUDGET,
        "--teacher",
        "garbage.onnx",
        prep=_write("garbage.onnx", GARBAGE),
        says="garbage.onnx",
    ),
    # every output against every input, before any work
    case(
        "o-is-teacher",
        *NAS,
        *NAS_BUDGET,
        "--data",
        "train.npz",
        "--teacher",
        "teacher.onnx",
        "-o",
        "teacher.onnx",
        max_seconds=30,
        says="teacher.onnx",
    ),
    case("o-is-data", *NAS, *NAS_BUDGET, "--data", "train.npz", "-o", "train.npz", max_seconds=30, says="train.npz"),
    case(
        "o-is-genotype",
        *NAS,
        "--data",
        "train.npz",
        "--genotype",
        "g.json",
        "-o",
        "g.json",
        prep=_write("g.json", GENOTYPE),
        max_seconds=30,
        says="g.json",
    ),
    case(
        "output-dir-holds-teacher",
        *NAS,
        *NAS_BUDGET,
        "--data",
        "train.npz",
        "--teacher",
        "nd/model.onnx",
        "--output-dir",
        "nd",
        prep=_copy("teacher.onnx", "nd/model.onnx"),
        max_seconds=30,
        says="nd/model.onnx",
    ),
    case(
        "output-dir-holds-foreign-file",
        *NAS,
        *NAS_BUDGET,
        "--data",
        "train.npz",
        "--output-dir",
        "nd",
        prep=_write("nd/report.json", "{}"),
        max_seconds=30,
        says="report.json",
    ),
    case(
        "output-dir-is-file",
        *NAS,
        *NAS_BUDGET,
        "--data",
        "train.npz",
        "--output-dir",
        "inputs.npz",
        max_seconds=30,
        says="inputs.npz",
    ),
    case("o-dev-null", *NAS, *NAS_BUDGET, "--data", "train.npz", "-o", "/dev/null", max_seconds=30, says="/dev/null"),
    case("o-trailing-slash", *NAS, *NAS_BUDGET, "--data", "train.npz", "-o", "newdir/", says="newdir/"),
    case(
        "layers-100000",
        "search",
        "nas",
        "--data",
        "train.npz",
        "--budget-minutes",
        "1",
        "--layers",
        "100000",
        max_seconds=30,
        says="--layers",
    ),
    case(
        "channels-100000",
        *NAS,
        *NAS_BUDGET,
        "--data",
        "train.npz",
        "--channels",
        "100000",
        max_seconds=30,
        says="--channels",
    ),
    case(
        "threads-million", *NAS, *NAS_BUDGET, "--data", "train.npz", "--threads", MANY, max_seconds=30, says="--threads"
    ),
    case("seed-2-32", *NAS, *NAS_BUDGET, "--data", "train.npz", "--seed", SEED_2_32, says="--seed"),
]


@pytest.mark.parametrize("c", SEARCH_NAS)
def test_search_nas(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# --- pipeline, bench, bench report, demo ---------------------------------------------------------

# a bad value that slips through ends at the architecture search: its budget is too small to score
PIPE = (
    "pipeline",
    "--teacher",
    "teacher.onnx",
    "--budget-minutes",
    "0.02",
    "--proxy-steps",
    "1",
    "--train-size",
    "64",
    "--final-steps",
    "1",
    "--recover-steps",
    "1",
    "--no-hardware-aware",
)

PIPELINE = [
    case("teacher-missing", "pipeline", "--teacher", "missing.onnx", "--output-dir", "pipe", says="missing.onnx"),
    case(
        "teacher-garbage",
        *PIPE[:1],
        "--teacher",
        "garbage.onnx",
        *PIPE[3:],
        "--output-dir",
        "pipe",
        prep=_write("garbage.onnx", GARBAGE),
        says="garbage.onnx",
    ),
    case("output-dir-in-missing-folder", *PIPE, "--output-dir", "nowhere/pipe", says="nowhere"),
    case("output-dir-is-file", *PIPE, "--output-dir", "inputs.npz", says="inputs.npz"),
    case(
        "budget-negative",
        "pipeline",
        "--teacher",
        "teacher.onnx",
        "--budget-minutes",
        "-1",
        "--output-dir",
        "pipe",
        says="--budget-minutes",
    ),
    case("ratio-below-1", *PIPE, "--ratio", "0.5", "--output-dir", "pipe", marks=needs_fmnist, says="--ratio"),
    case("method-unknown", *PIPE, "--method", "qr", "--output-dir", "pipe", marks=needs_fmnist, says="qr"),
    case("threads-negative", *PIPE, "--threads", "-1", "--output-dir", "pipe", marks=needs_fmnist, says="--threads"),
    # the teacher or the data inside the output folder, under a name a stage writes: refused up front
    case(
        "teacher-is-a-stage-output",
        *PIPE[:1],
        "--teacher",
        "pd/recovered.onnx",
        *PIPE[3:],
        "--output-dir",
        "pd",
        prep=_copy("teacher.onnx", "pd/recovered.onnx"),
        max_seconds=30,
        says="pd/recovered.onnx",
    ),
    case(
        "data-is-a-stage-output",
        *PIPE,
        "--data",
        "pd/calibration.npz",
        "--output-dir",
        "pd",
        prep=_copy("train.npz", "pd/calibration.npz"),
        max_seconds=30,
        says="pd/calibration.npz",
    ),
    case(
        "output-dir-holds-foreign-file",
        *PIPE,
        "--data",
        "train.npz",
        "--output-dir",
        "pd",
        prep=_write("pd/nas.onnx", GARBAGE),
        max_seconds=30,
        says="nas.onnx",
    ),
    case(
        "threads-million",
        *PIPE,
        "--data",
        "train.npz",
        "--threads",
        MANY,
        "--output-dir",
        "pd",
        max_seconds=30,
        says="--threads",
    ),
]


@pytest.mark.parametrize("c", PIPELINE)
def test_pipeline(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


BENCH = [
    case("models-unknown", "bench", "--models", "resnet9000", says="resnet9000"),
    case("methods-unknown", "bench", "--methods", "qr", says="qr"),
    case("ratios-not-numbers", "bench", "--ratios", "four", says="--ratios"),
    case("report-results-missing", "bench", "report", "missing", "-o", "rep", says="missing"),
    case(
        "report-rows-garbage",
        "bench",
        "report",
        "res",
        "-o",
        "rep",
        prep=_write("res/rows.jsonl", GARBAGE),
        says="rows.jsonl",
    ),
    case(
        "report-o-is-file",
        "bench",
        "report",
        "res",
        "-o",
        "inputs.npz",
        prep=_write("res/rows.jsonl", ""),
        says="inputs.npz",
    ),
    # refused before the output folder is made: no empty folder is left
    case("data-missing", "bench", "--data", "missing.npz", "-o", "res", max_seconds=30, says="missing.npz"),
    case(
        "output-holds-foreign-rows",
        "bench",
        "-o",
        "res",
        prep=_write("res/rows.jsonl", "{}\n"),
        max_seconds=30,
        says="rows.jsonl",
    ),
]


@pytest.mark.parametrize("c", BENCH)
def test_bench(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


DEMO_CASES = [
    case("o-is-folder", "demo", "--recover-steps", "0", "-o", "outdir", prep=_mkdir("outdir"), says="outdir"),
    case("o-in-missing-folder", "demo", "--recover-steps", "0", "-o", "nowhere/demo.onnx", says="nowhere"),
    case("ratio-below-1", "demo", "--recover-steps", "0", "--ratio", "0.5", says="--ratio"),
    case("recover-steps-negative", "demo", "--recover-steps", "-1", says="--recover-steps"),
]


@pytest.mark.parametrize("c", DEMO_CASES)
def test_demo(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# --- click's own usage errors: one `error:` line too ---------------------------------------------

USAGE = [
    case("unknown-command", "frobnicate", says="frobnicate"),
    case("unknown-top-option", "--bogus", says="--bogus"),
    case("inspect-unknown-option", "inspect", "model.onnx", "--bogus", says="--bogus"),
    case("optimize-unknown-option", *OPT, "-o", "out.onnx", "--bogus", says="--bogus"),
    case("optimize-missing-o", *OPT, says="-o"),
    case("optimize-missing-model", "optimize", says="MODEL"),
    case("optimize-bad-choice", *OPT, "-o", "out.onnx", "--method", "qr", says="--method"),
    case("optimize-rank-not-int", *OPT, "-o", "out.onnx", "--rank", "four", says="--rank"),
    case("verify-unknown-option", *VER, "--bogus", says="--bogus"),
    case("verify-missing-candidate", "verify", "model.onnx", says="CANDIDATE"),
    case("profile-unknown-option", "profile", "model.onnx", "--bogus", says="--bogus"),
    case("recover-unknown-option", *REC, "-o", "out.onnx", "--bogus", says="--bogus"),
    case("recover-missing-o", *REC, says="-o"),
    case("bench-unknown-option", "bench", "--bogus", says="--bogus"),
    case("bench-report-unknown-option", "bench", "report", "res", "--bogus", says="--bogus"),
    case("search-unknown-subcommand", "search", "layers", says="layers"),
    case("search-ranks-unknown-option", *RANKS, "--bogus", says="--bogus"),
    case("search-nas-unknown-option", "search", "nas", "--bogus", says="--bogus"),
    case(
        "pipeline-unknown-option",
        "pipeline",
        "--teacher",
        "teacher.onnx",
        "--output-dir",
        "p",
        "--bogus",
        says="--bogus",
    ),
    case("pipeline-missing-teacher", "pipeline", "--output-dir", "p", says="--teacher"),
    case("demo-unknown-option", "demo", "--bogus", says="--bogus"),
]


@pytest.mark.parametrize("c", USAGE)
def test_usage_error(launcher, tmp_path, c):
    check_user_error(launcher, tmp_path, c)


# --- Ctrl-C and SIGTERM while working ------------------------------------------------------------


def _signal_when_ready(launcher: Launcher, folder: Path, args, ready: Callable[[], bool], sig: int) -> Result:
    """Start the CLI, wait until ready() (the work is under way), send sig, return the result."""
    run = launcher.start(folder, args)
    deadline = time.monotonic() + 90
    while not ready():
        if run.poll() is not None:
            pytest.fail(f"exited {run.returncode} before the work started\n    {_tail(run.stderr())}")
        if time.monotonic() > deadline:
            run.wait(timeout=0)  # kills it and fails
        time.sleep(0.05)
    time.sleep(0.5)  # inside the loop
    run.send_signal(sig)
    return run.wait(timeout=60)


def _check_signalled(folder: Path, before: dict, result: Result, code: int) -> None:
    after = snapshot(folder)
    problems = []
    if result.returncode != code:
        problems.append(f"exit status {result.returncode}, expected {code}")
    if "Traceback" in result.stderr + result.stdout:
        problems.append("a traceback was printed")
    err_lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not err_lines or not err_lines[-1].startswith("error: "):
        problems.append("the last line of stderr is not 'error: ...'")
    temps = sorted(p for p in after if is_temp(p))
    if temps:
        problems.append(f"temp files left: {temps}")
    changed = sorted(p for p in before if after.get(p) != before[p])
    if changed:
        problems.append(f"changed or removed: {changed}")
    assert not problems, "\n  ".join(problems) + f"\n  stderr tail:\n    {_tail(result.stderr)}"


@pytest.mark.parametrize(
    "sig,code", [pytest.param(signal.SIGINT, 130, id="sigint-130"), pytest.param(signal.SIGTERM, 143, id="sigterm-143")]
)
def test_recover_signalled(launcher, tmp_path, sig, code):
    """Labelled .npz data (no Fashion-MNIST needed); training makes OUT.ckpt/ just before its loop."""
    make_workspace(tmp_path)
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "big.npz",
        x=rng.random((2000, 1, 28, 28), dtype=np.float32),
        y=rng.integers(0, 10, 2000).astype(np.int64),
    )
    args = (
        "recover",
        "model.onnx",
        "-o",
        "out.onnx",
        "--teacher",
        "teacher.onnx",
        "--data",
        "big.npz",
        "--batch-size",
        "32",
        "--epochs",
        "1000",
    )
    before = snapshot(tmp_path)
    result = _signal_when_ready(launcher, tmp_path, args, lambda: (tmp_path / "out.onnx.ckpt").is_dir(), sig)
    _check_signalled(tmp_path, before, result, code)


@pytest.mark.parametrize(
    "sig,code", [pytest.param(signal.SIGINT, 130, id="sigint-130"), pytest.param(signal.SIGTERM, 143, id="sigterm-143")]
)
def test_search_ranks_signalled(launcher, tmp_path, sig, code):
    make_workspace(tmp_path)
    log = tmp_path / "study.log"
    args = (
        "search",
        "ranks",
        "model.onnx",
        "--n-trials",
        "100000",
        "--storage",
        "journal:study.log",
        "-o",
        "out",
        "--no-models",
    )
    before = snapshot(tmp_path)
    # three trials created in the journal: the search loop is under way
    result = _signal_when_ready(
        launcher,
        tmp_path,
        args,
        lambda: log.exists() and log.read_text(errors="replace").count('"op_code":4') >= 3,
        sig,
    )
    _check_signalled(tmp_path, before, result, code)


def test_fresh_interpreter_entry_point(tmp_path):
    """`python -m tensorfold.cli` in a new interpreter, as the brief's reference: a user mistake."""
    make_workspace(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        cli("optimize", "missing.onnx", "-o", "out.onnx"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before
