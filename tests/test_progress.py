"""Progress lines (greedy.progress): redrawn in place on a terminal, plain and rate-limited in a file or pipe;
as used by the mini-batch loop (greedy.nn.fit.fit)."""
import io
import re
import sys

import numpy as np
from greedy import progress
from greedy.nn.fit import fit
from greedy.nn.model import Sequential
from greedy.nn.optim import SGD


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """Stands in for time.monotonic: each call advances by ``tick`` seconds."""

    def __init__(self, tick=1.0):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def as_terminal(monkeypatch):
    """stderr becomes a terminal (redrawn at every ``show``); called in the test body, after pytest's capture."""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(progress, "TTY_INTERVAL", 0.0)
    return term


def as_pipe(monkeypatch):
    """stderr becomes a plain stream (not a terminal)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    return out


def test_terminal_redraws_one_line_pads_over_longer_text_and_clears_it(monkeypatch):
    term = as_terminal(monkeypatch)
    bar = progress.Progress()
    assert bar.tty and bar.due()
    bar.show("epoch 1/2: 10 batches")
    bar.show("epoch 1/2: 9")
    assert term.getvalue() == "\repoch 1/2: 10 batches\repoch 1/2: 9" + " " * 9
    bar.end()
    assert term.getvalue().endswith("\r" + " " * 12 + "\r") and "\n" not in term.getvalue()
    bar.show("ab")
    bar.end("done")
    assert term.getvalue().endswith("\rab\rdone\n")


def test_pipe_gets_plain_lines_at_most_one_per_interval(monkeypatch):
    out = as_pipe(monkeypatch)
    clock = Clock(tick=1.0)
    monkeypatch.setattr(progress, "monotonic", clock)
    bar = progress.Progress(interval=10.0)
    assert not bar.tty
    shown = []
    for i in range(45):
        if bar.due():
            bar.show(f"step {i}")
            shown.append(clock.now)
    bar.end("finished")
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and lines[-2] == "finished"
    assert lines[:-2] == [f"step {i}" for i in (9, 19, 29, 39)]  # one clock read per due(), one per show()
    assert np.all(np.diff(shown) >= 10)
    assert "\r" not in out.getvalue() and not any(line != line.rstrip() for line in lines)


def test_pipe_without_final_text_writes_nothing_at_the_end(monkeypatch):
    out = as_pipe(monkeypatch)
    bar = progress.Progress()
    bar.end()
    assert out.getvalue() == ""


def test_disabled_bar_writes_nothing(monkeypatch):
    term = as_terminal(monkeypatch)
    bar = progress.Progress(enabled=False)
    assert not bar.due()
    bar.show("x")
    bar.end("y")
    assert term.getvalue() == ""


def problem(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def model():
    return Sequential.from_spec("fc6-relu-fc3").build((5,), 0)


def test_fit_on_a_terminal_shows_the_epoch_against_its_total_on_one_line(monkeypatch):
    term = as_terminal(monkeypatch)
    x, y = problem()
    fit(model(), x, y, SGD(0.05), epochs=3, batch_size=8, progress=True, label="e2e")
    text = term.getvalue()
    assert "\n" not in text
    draws = [d.rstrip() for d in text.split("\r") if d.strip()]
    assert draws[0] == draws[0].strip() and len(draws) == 15  # every step (interval 0), each line cleared
    assert all(re.fullmatch(r"e2e epoch [123]/3: [1-5]/5 batches, loss \d+\.\d{4}", d) for d in draws)
    assert draws[-1].startswith("e2e epoch 3/3: 5/5 batches")


def test_fit_into_a_pipe_writes_plain_rate_limited_lines(monkeypatch):
    out = as_pipe(monkeypatch)
    monkeypatch.setattr(progress, "monotonic", Clock(tick=1.0))
    x, y = problem()
    fit(model(), x, y, SGD(0.05), steps=60, batch_size=8, progress=True)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and 3 <= len(lines) - 1 <= 6  # about 61 clock reads, a line per 10 s at most
    assert all(re.fullmatch(r"train epoch \d+/12: [1-5]/5 batches, loss \d+\.\d{4}", line) for line in lines[:-1])
    assert "\r" not in out.getvalue()


def test_fit_with_a_time_budget_shows_seconds_against_the_budget(monkeypatch):
    term = as_terminal(monkeypatch)
    x, y = problem()
    fit(model(), x, y, SGD(0.05), epochs=1e6, batch_size=8, time_budget=0.05, progress=True)
    draws = [d for d in term.getvalue().split("\r") if d.strip()]
    assert draws and all(re.match(r"train epoch \d+, \d+/0.05 s: ", d) for d in draws)


def test_fit_without_progress_writes_nothing(monkeypatch):
    term = as_terminal(monkeypatch)
    x, y = problem()
    fit(model(), x, y, SGD(0.05), epochs=1, batch_size=8)
    assert term.getvalue() == ""
