"""Progress lines on stderr for long loops: training epochs (``greedy.nn.fit``) and downloads (``greedy.data.files``).

On a terminal the line is redrawn in place with a carriage return, at most every
``TTY_INTERVAL`` seconds. When stderr is a file or a pipe each update is a plain
line of its own, at most one every ``interval`` seconds (10 by default), with no
carriage returns and no padding, so a log stays short and readable.
"""
import sys
from time import monotonic

TTY_INTERVAL = 0.2


class Progress:
    """One progress line on stderr; every method does nothing when ``enabled`` is False.

    In a loop, ``if bar.due(): bar.show(text)``: ``due`` is cheap and builds no text.
    ``end(text)`` finishes the line: on a terminal it leaves ``text`` on a line of its own,
    or clears the line when ``text`` is None; elsewhere it writes ``text`` (if any) as a
    last line. The bar can be used again after ``end``. The first ``show`` is due one
    interval after the bar is made. ``sys.stderr`` is looked up at each write, so a
    redirected stderr is honoured; whether it is a terminal is decided once, here.
    """

    def __init__(self, enabled=True, interval=10.0):
        self.enabled = bool(enabled)
        isatty = getattr(sys.stderr, "isatty", None)
        self.tty = self.enabled and callable(isatty) and bool(isatty())
        self.interval = TTY_INTERVAL if self.tty else float(interval)
        self.last = monotonic()
        self.width = 0  # length of the text on the terminal line, to overwrite when shorter text follows

    def due(self):
        """True when enabled and at least one interval has passed since the last line (or since the start)."""
        return self.enabled and monotonic() - self.last >= self.interval

    def show(self, text):
        """Draw ``text`` now (callers normally ask ``due()`` first)."""
        if not self.enabled:
            return
        self.last = monotonic()
        if self.tty:
            self._write("\r" + text + " " * max(0, self.width - len(text)))
            self.width = len(text)
        else:
            self._write(text + "\n")

    def end(self, text=None):
        """Finish the current line, leaving ``text`` as the last one (see the class docstring)."""
        if not self.enabled:
            return
        if self.tty:
            if text is not None:
                self._write("\r" + text + " " * max(0, self.width - len(text)) + "\n")
            elif self.width:
                self._write("\r" + " " * self.width + "\r")
        elif text is not None:
            self._write(text + "\n")
        self.width = 0

    @staticmethod
    def _write(s):
        sys.stderr.write(s)
        sys.stderr.flush()
