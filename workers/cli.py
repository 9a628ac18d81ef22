"""The ``dada`` command line.

    dada stxm SPEC --horz H --vert V [--algo A] [--signal S] [pre-processing] [--polarroi ...]
              [--radial ...] [--gridroi ...] --format tiff_raw|json|ascii|png -o FILE
    dada show SPEC [--frame N] [--stack N,op] [--multi C,R] [pre-processing] [--format F] -o FILE
    dada stxm SPEC... --grid COLSxROWS ...     a super-grid of scans stitched into one map
    dada stxm ... --scheduler tcp://HOST:PORT  on a Dask cluster (else here, or a local cluster)
    dada scheduler [--port 8786] [--dashboard-port 8787]
    dada worker --scheduler tcp://HOST:PORT [--nthreads N]

SPEC is a path (Eiger master file, multi-page TIFF, folder of frame files) or a dada URL
``stxm/INSTRUMENT/RUN/DETECTOR/SAMPLE/SCAN/FIRST?algo=...&horz=...``; URL parameters and flags
are two spellings of the same thing (a flag overrides the URL). Errors print one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from workers.formats import FormatError
from workers.output import FORMATS, PALETTES, SCALES
from workers.request import ALGO_SIGNALS, RADIAL_UNITS, STACK_OPS, BadParameter

if TYPE_CHECKING:
    from workers.resultcache import ResultCache


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + line
        self.exit(2, f"{self.prog}: error: {message}\n")


def _preprocessing(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pre-processing (in this order)")
    g.add_argument("--mask", help="bad/gap pixel masking: 1 (default) or 0")
    g.add_argument("--roi", help="x,y,w,h in detector pixels")
    g.add_argument("--binning", help="h,v (or n): sum blocks of h x v pixels")
    g.add_argument("--empty", help="N: divide pixel-wise by frame N")
    g.add_argument("--diff", help="N: subtract frame N")
    g.add_argument("--stack", help=f"N,op: combine N frames per point, op in {','.join(STACK_OPS)}")
    g.add_argument("--layout", help="layout TOML for dada URLs (default $DADA_LAYOUT)")


def _output(p: argparse.ArgumentParser, default_fmt: str | None, default_scale: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=FORMATS, default=default_fmt, required=default_fmt is None)
    g.add_argument("-o", "--output", required=True, help="output file")
    g.add_argument("--palette", choices=PALETTES, default="gray")
    g.add_argument("--scale", choices=SCALES, default=default_scale)
    g.add_argument("--cmin", type=float)
    g.add_argument("--cmax", type=float)
    g.add_argument("--zoom", type=int, help="png: integer magnification")


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="dada", description="dada: STXM analysis of X-ray detector scans")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("stxm", help="compute STXM maps of a scan")
    s.add_argument(
        "spec",
        nargs="+",
        help="scan path, glob or dada URL (with optional ?params); several "
        "with --grid; {A..B} ranges expand",
    )
    s.add_argument("--grid", help="COLSxROWS: stitch the scans row by row into one map")
    s.add_argument("--horz", help="scan points per line")
    s.add_argument("--vert", help="scan lines")
    s.add_argument("--first", help="index of the scan's first frame (default 0)")
    s.add_argument("--algo", help=f"one of {', '.join(ALGO_SIGNALS)} (default brightfield)")
    s.add_argument("--signal", help="signal(s), comma-separated (json writes several)")
    s.add_argument("--polarroi", help="cenx,ceny;minq,maxq;minphi,maxphi")
    s.add_argument("--radial", help="cenx,ceny;minq,maxq;numq (with --poni: minq,maxq;numq)")
    s.add_argument("--gridroi", help="x,y,w,h;nx,ny[;px,py]")
    s.add_argument("--poni", help="pyFAI PONI calibration for radial")
    s.add_argument("--unit", help=f"radial unit: {', '.join(RADIAL_UNITS)}")
    s.add_argument("--plane", type=int, help="png of radial/gridroi: plane to draw (default sum)")
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    _preprocessing(s)
    _distribution(s)
    _output(s, None, "lin")
    w = sub.add_parser("show", help="render a frame, a stack operation or a grid of frames")
    w.add_argument("spec", help="scan path or dada URL")
    w.add_argument("--frame", help="frame index (default: the scan's first)")
    w.add_argument("--multi", help="C,R: a grid of C x R consecutive frames")
    _preprocessing(w)
    _output(w, "png", "log")
    d = sub.add_parser("scheduler", help="run the Dask scheduler (foreground, logs to stderr)")
    d.add_argument("--host", default="", help="address to listen on (default: all)")
    d.add_argument("--port", type=int, default=8786)
    d.add_argument("--dashboard-port", type=int, default=8787, help="0: no dashboard")
    k = sub.add_parser("worker", help="run a Dask worker with the analysis code (foreground)")
    k.add_argument("--scheduler", required=True, help="tcp://HOST:PORT")
    k.add_argument("--nthreads", type=int, default=os.cpu_count() or 1)
    k.add_argument("--name", help="worker name (default: its address)")
    k.add_argument("--host", default="", help="address to listen on (default: all)")
    return top


def _distribution(p: argparse.ArgumentParser) -> None:
    from workers.resultcache import DEFAULT_DIR

    g = p.add_argument_group("distribution and result cache")
    g.add_argument("--scheduler", help="tcp://HOST:PORT of a dada scheduler (Dask)")
    g.add_argument(
        "--workers",
        type=int,
        help="without --scheduler: N local worker processes (0: this process; default: "
        "this process for small jobs)",
    )
    g.add_argument("--lines-per-task", type=int, default=1, help="scan lines per task")
    g.add_argument(
        "--result-cache",
        help=f"result cache directory (default $DADA_RESULT_CACHE, else {DEFAULT_DIR} if it "
        "exists)",
    )
    g.add_argument("--result-cache-size", default="10G", help="bound in bytes (K/M/G/T)")
    g.add_argument("--no-result-cache", action="store_true", help="neither read nor write it")
    g.add_argument("-v", "--verbose", action="store_true", help="a summary line on stderr")


_REQUEST_FLAGS = [
    "horz",
    "vert",
    "first",
    "algo",
    "signal",
    "polarroi",
    "radial",
    "gridroi",
    "poni",
    "unit",
    "mask",
    "roi",
    "binning",
    "empty",
    "diff",
    "stack",
    "layout",
]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _REQUEST_FLAGS if getattr(args, k, None) is not None}


def _png(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "palette_name": args.palette,
        "scale": args.scale,
        "cmin": args.cmin,
        "cmax": args.cmax,
        "zoom": args.zoom,
    }


def _cache(args: argparse.Namespace) -> ResultCache | None:
    from workers.resultcache import DEFAULT_DIR, ResultCache, parse_size

    if args.no_result_cache:
        return None
    size = parse_size(args.result_cache_size)
    where = args.result_cache or os.environ.get("DADA_RESULT_CACHE")
    if where is None:
        if not os.path.isdir(DEFAULT_DIR) or not os.access(DEFAULT_DIR, os.W_OK):
            return None
        where = DEFAULT_DIR
    return ResultCache(where, size)


def _stxm(args: argparse.Namespace) -> None:
    from workers import output
    from workers.cluster import backend_for
    from workers.jobs import JobReport, run_job
    from workers.supergrid import make_grid

    params = _params(args)
    grid = make_grid(args.spec, params, args.grid)
    if (
        args.format != "json"
        and "signal" not in params
        and all("signal=" not in s for s in args.spec)
    ):
        grid = make_grid(args.spec, {**params, "signal": grid.signals[0]}, args.grid)
    if args.format != "json" and len(grid.signals) != 1:
        raise BadParameter(
            f"format {args.format} writes one signal, got {','.join(grid.signals)}; "
            "use --format json for several"
        )
    if args.lines_per_task < 1:
        raise BadParameter(f"bad lines-per-task={args.lines_per_task}: an integer >= 1")
    cache = _cache(args)
    show = args.progress if args.progress is not None else None
    bar: Any = None
    if show is not False:
        from tqdm import tqdm

        bar = tqdm(
            total=len(grid.tiles) * grid.tiles[0].horz * grid.tiles[0].vert,
            unit="pt",
            disable=None if show is None else False,
        )
    report = JobReport()
    frames = sum(t.nframes for t in grid.tiles)
    try:
        with backend_for(args.scheduler, args.workers, args.threads, frames) as backend:
            result = run_job(
                grid,
                backend,
                cache,
                lines_per_task=args.lines_per_task,
                progress=bar.update if bar else None,
                report=report,
            )
    finally:
        if bar is not None:
            bar.close()
    if args.verbose:
        print(f"dada stxm: {report.line()}", file=sys.stderr)
    output.write(
        result, list(grid.signals), args.format, args.output, plane=args.plane, **_png(args)
    )


def _show(args: argparse.Namespace) -> None:
    from workers import output
    from workers.show import show_image

    params = _params(args)
    if args.frame is not None:
        params["first"] = args.frame
    multi = None
    if args.multi is not None:
        try:
            c, r = (int(x) for x in args.multi.split(","))
        except ValueError:
            raise BadParameter(
                f"bad multi={args.multi!r}: C,R (columns, rows), integers >= 1"
            ) from None
        multi = (c, r)
    image = show_image(args.spec, multi=multi, **params)
    output.write_image(image, args.format, args.output, **_png(args))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "scheduler":
        from workers.cluster import scheduler_main

        raise SystemExit(scheduler_main(args.host, args.port, args.dashboard_port))
    if args.command == "worker":
        from workers.cluster import worker_main

        raise SystemExit(worker_main(args.scheduler, args.nthreads, args.name, args.host))
    try:
        {"stxm": _stxm, "show": _show}[args.command](args)
    except (BadParameter, FormatError, OSError) as e:
        print(f"dada {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"dada {args.command}: cancelled", file=sys.stderr)
        raise SystemExit(130) from None
