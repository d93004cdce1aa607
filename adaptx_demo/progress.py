"""The demo's progress: a labelled phase at a time, on a tqdm bar or, without tqdm, as plain lines.

Every phase says what it is doing while it runs (a compilation can take seconds,
and an unlabelled bar looks stuck), and its wall time is kept for summary.md.
"""
import contextlib
import sys
import time


class Progress:
    """``with progress.phase("label", work): ...`` advances the bar by ``work`` when the phase ends.

    ``bar``: None picks tqdm if it is installed and plain lines on stderr if not;
    False shows nothing (the phase times are still kept).
    """

    def __init__(self, total: int, desc: str = "adaptx demo", bar=None):
        self.total, self.desc, self.done = total, desc, 0
        self.times = []  # (label, seconds) per finished phase, in order
        self._bar = None
        self._plain = False
        if bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: fall back to a line per phase
                self._plain = True
            else:
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr,
                                 bar_format="{desc} {bar:12} {n}/{total} phases [{elapsed}]")

    @contextlib.contextmanager
    def phase(self, label: str, work: int = 1):
        """Label the bar with ``label`` while the body runs, then advance it by ``work``."""
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc}: {label}")
        elif self._plain:
            print(f"{self.desc} [{self.done}/{self.total}] {label} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.times.append((label, seconds))
        if self._plain:
            print(f"{self.desc} [{self.done + work}/{self.total}] {label}: {seconds:.1f} s", file=sys.stderr, flush=True)
        self.update(work)

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` without a phase (a section that times its work itself)."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def write(self, text: str) -> None:
        """Print ``text`` to stdout (with or without a bar) without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc}: done")
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
