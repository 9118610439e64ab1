"""What a run prints: TensorFlow's log noise off unless asked, a progress bar on a terminal, plain lines in a log."""

import atexit
import logging
import os
import re
import sys
import time
import warnings

# TensorFlow's and absl's C++ log lines (INFO/WARNING/ERROR; FATAL kept: it explains an abort), and absl's notice
# that logging is not initialised, which XLA's first compile prints whatever TF_CPP_MIN_LOG_LEVEL says.
_NATIVE_LOG = re.compile(rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]"
                         rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\]"
                         rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


def quiet_tensorflow(*, verbose=False):
    """Call before TensorFlow is imported: hide its C++ log lines (errors it raises still say what failed)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    # 3, not 2: on a machine without a GPU, TensorFlow logs "failed call to cuInit" at ERROR level.
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # Python-side chatter (deprecation notices, retracing advice) goes through these loggers and warnings.
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # gcsfs logs a whole traceback when it gives up on a request, then raises: the CLI's one line says it all.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    for module in ("keras", "tensorflow", "tf_keras", "absl"):
        warnings.filterwarnings("ignore", module=module)


def drop_native_logs():
    """Pass this process's stderr through a forked filter that drops native log lines (call before TensorFlow loads).

    A separate process, not a thread: when the runtime aborts, the filter still drains and shows what was written.
    """
    if not hasattr(os, "fork") or "tensorflow" in sys.modules:
        return  # forking a process that already runs TensorFlow's threads is unsafe; too late to filter anyway
    read, write = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not _NATIVE_LOG.match(line):
                    os.write(2, line)
        os._exit(0)
    os.close(read)
    original = os.dup(2)
    os.dup2(write, 2)
    os.close(write)

    def finish():
        # Give the filter EOF and wait, so its last lines come out before the shell prompt does.
        sys.stderr.flush()
        os.dup2(original, 2)
        os.waitpid(pid, 0)

    atexit.register(finish)


class Progress:
    """A tqdm bar when `stream` is a terminal; otherwise plain lines (no carriage returns): the last one at the end,
    others only every `total / lines` units and `interval` seconds, so a short job writes one line to a log."""

    def __init__(self, total, *, desc, unit, lines=10, interval=10.0, enabled=True, stream=None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stdout
        self.count, self.printed, self.postfix = 0, 0, {}
        self.every = max(1, -(-total // max(1, lines)))
        self.start = self.last = time.perf_counter()
        self.interval = interval
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, n=1, **postfix):
        self.count += n
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif (self.enabled and self.count >= self.printed + self.every and self.count < self.total
              and time.perf_counter() - self.last >= self.interval):
            self._line()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.count != self.printed:
            self._line()

    def _line(self):
        self.printed, self.last = self.count, time.perf_counter()
        seconds = self.last - self.start
        extra = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.count}/{self.total} {self.unit} in {seconds:.1f}s "
              f"({self.count / max(seconds, 1e-9):.1f} {self.unit}/s{extra})", file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
