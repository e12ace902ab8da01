"""Progress when standard output is a log, not a terminal: a stage is never silent for long (issue 23, part 7)."""

from __future__ import annotations

import io
import time

from vlaforge.train.logging import LineProgress, progress_bar


def test_a_log_gets_a_line_every_few_seconds_and_one_at_the_end():
    out = io.StringIO()
    prog = LineProgress("sft", 4, every=0.0, stream=out)
    with prog:
        for s in range(1, 5):
            prog.update(0, completed=s, info=f"loss {1 / s:.2f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per update (every 0 s) and the final one
    assert lines[0].startswith("sft: 1/4 (") and "eta" in lines[0] and lines[0].endswith("loss 1.00")
    assert lines[-1].startswith("sft: 4/4 (") and "eta" not in lines[-1]
    quiet = io.StringIO()
    with LineProgress("train", 3, every=3600, stream=quiet) as p:
        p.update(0, advance=1)
        p.update(0, advance=1)
    assert quiet.getvalue().count("\n") == 1 and "train: 2/3" in quiet.getvalue()  # throttled: only the end


def test_a_log_gets_lines_while_no_update_comes():
    out = io.StringIO()
    with LineProgress("distill", 5, every=0.05, stream=out) as p:
        p.update(0, completed=1, info="success 0.50")
        time.sleep(0.4)  # a long update: no call for 8 periods
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(x.startswith("distill: 1/5 (") for x in lines)  # >= 1 from the heartbeat
    assert all(x.endswith("success 0.50") for x in lines)


def test_no_heartbeat_thread_for_an_endless_period():
    out = io.StringIO()
    with LineProgress("sft", 2, every=float("inf"), stream=out) as p:
        assert p._beat is None
        p.update(0, completed=1)
    assert out.getvalue().count("\n") == 1


def test_progress_bar_outside_a_terminal_is_a_line_printer(capsys):
    prog, task = progress_bar("collect", 2, enabled=True, every=0.0)
    assert isinstance(prog, LineProgress)  # pytest's captured stdout is not a terminal
    with prog:
        prog.update(task, completed=2)
    assert "collect: 2/2" in capsys.readouterr().out
    off, _ = progress_bar("collect", 2, enabled=False)
    assert not isinstance(off, LineProgress)
