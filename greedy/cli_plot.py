"""``python cli.py plot RUN [RUN ...] --out FILE.png``: test accuracy against wall-clock seconds.

The curves and the PNG are ``greedy.plotting``'s; this is the command line over them."""
import sys

import click

from greedy.errors import GreedyError
from greedy.plotting import REFERENCES, plot as draw, read_runs, reference


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The PNG to write; the curves' points go to the same name with .json.")
@click.option("--reference", "references", multiple=True,
              help=f"A reference curve, repeatable: {', '.join(REFERENCES)} (seconds on the reference machine) or a "
                   f"JSON file {{\"label\": ..., \"points\": [[seconds, accuracy], ...]}}.")
@click.option("--tta", is_flag=True,
              help="End each run at its final accuracy with test-time augmentation (default: without, like every "
                   "other point and the references).")
@click.option("--speed-factor", "speed_factors", multiple=True, type=click.FloatRange(min=0, min_open=True),
              help="Multiply the runs' seconds by this: the factor of `python ../shared/tools/machine_speed.py` "
                   "puts them in seconds of the reference machine, like the references'. Once for every run, or "
                   "once per run in their order (runs measured at different speeds); default 1.")
@click.option("--title", default=None, help="A title above the plot.")
def plot(runs, out, references, tta, speed_factors, title):
    """Test accuracy against seconds since the start of training, one line per run folder."""
    factors = speed_factors or (1.0,)
    if len(factors) not in (1, len(runs)):
        click.echo(f"Error: give --speed-factor once, or once for each of the {len(runs)} runs; got "
                   f"{len(factors)}", err=True)
        sys.exit(2)
    try:
        curves = [c._replace(points=[(s * f, a) for s, a in c.points])
                  for c, f in zip(read_runs(runs, tta), factors * len(runs) if len(factors) == 1 else factors)]
        data_path = draw(curves, out, [reference(r) for r in references], title)
    except GreedyError as e:  # one line, also when the command runs outside the greedy group
        click.echo(f"Error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    for c in curves:
        s, a = c.points[-1]
        click.echo(f"{c.label}: {len(c.points)} points, {100 * a:.2f} % at {s:.1f} s")
    click.echo(f"-> {out}, {data_path}")
