"""``raypriv`` command line.

``raypriv audit [--config FILE] [--out DIR] [--models N] [--paradigms a,b] [--seed S]``
runs (or resumes) an audit; flags override the config.
``raypriv status RUN_DIR [--config FILE]`` says what a run holds and lacks.
``raypriv report RUN_DIR [RUN_DIR ...] [--out DIR]`` compares the paradigms of
finished runs in one report.html (self-contained) and report.md.
``raypriv paradigms [NAME]`` lists the paradigms (built-in and plugins) with their options.  Problems with the
input print one ``error:`` line and exit with status 2; an interrupted run
exits with 130 and resumes when rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raypriv.errors import AuditInterrupted, RayprivError

MAX_BOOTSTRAP = 10_000  # resamples: ample for a 95% interval, and the weights (n_boot × n_audit) stay in memory
MAX_TOP = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypriv", description="Membership-inference audits of synthetic-data training.")
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="run or resume an audit (default: real-data training on digits)")
    audit.add_argument("--config", help="experiment YAML (default: the built-in digits-quick config)")
    audit.add_argument("--out", help="run directory (overrides out_dir)")
    audit.add_argument("--models", type=int, help="number of shadow models (overrides n_models)")
    audit.add_argument("--paradigms", help="comma-separated paradigms (overrides paradigms), e.g. real")
    audit.add_argument("--seed", type=int, help="experiment seed (overrides seed)")
    audit.add_argument("--actors", type=int, help="shadow-training actors (overrides ray.num_actors)")
    audit.add_argument("--no-ray", action="store_true", help="train in this process instead of on Ray actors")
    audit.add_argument("--quiet", action="store_true", help="no progress output")
    audit.add_argument("--force-unlock", action="store_true",
                       help="take the run directory's lease even if another audit holds it (only when that one is gone)")
    status = commands.add_parser("status", help="what a run directory holds: complete and missing models")
    status.add_argument("run_dir", help="the run directory (an audit's --out)")
    status.add_argument("--config", help="check this config against the run (default: the run's own config.yaml)")
    report = commands.add_parser("report", help="compare the paradigms of finished runs: report.html and report.md")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories (an audit's --out)")
    report.add_argument("--out", help="output folder (default: the first run's report/)")
    report.add_argument("--attack", help="attack the verdicts and plots use (default: lira_online, else the first attack)")
    report.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="only this paired comparison (paradigm names, or run:paradigm where runs share one)")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the audit samples (default 1000)")
    report.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    report.add_argument("--top", type=int, default=20, help="most vulnerable samples shown per paradigm (default 20)")
    paradigms = commands.add_parser("paradigms", help="list the available paradigms (built-in and plugins) and their options")
    paradigms.add_argument("name", nargs="?", help="show this one in full (a name, NAME@tag, or module:Class)")
    return parser


def audit_command(args: argparse.Namespace) -> int:
    from raypriv.config import load
    from raypriv.driver import run_audit

    overrides = {
        "out_dir": args.out,
        "n_models": args.models,
        "paradigms": args.paradigms,
        "seed": args.seed,
        "ray.num_actors": args.actors,
    }
    config = load(args.config, overrides)
    result = run_audit(config, use_ray=not args.no_ray, show_progress=not args.quiet, force_unlock=args.force_unlock)
    print(result.summary, end="")
    print(f"results: {result.run_dir} (metrics.json, scores.parquet, logits/, models.parquet, roc.png)")
    return 0


def status_command(args: argparse.Namespace) -> int:
    from raypriv.config import load
    from raypriv.run.directory import RunDirectory

    config = load(args.config) if args.config else None
    print(RunDirectory(args.run_dir).status(config), end="")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from raypriv.reader import load_run
    from raypriv.report import build_report, format_comparison, format_verdicts, write_report
    from raypriv.run.store import RunStore

    for flag, value, low, high in (("--bootstrap", args.bootstrap, 100, MAX_BOOTSTRAP), ("--top", args.top, 1, MAX_TOP)):
        if not low <= value <= high:
            raise RayprivError(f"report {flag}={value} is out of range; give {low}..{high}")
    report = build_report(
        [load_run(run_dir) for run_dir in args.run_dirs], attack=args.attack, n_boot=args.bootstrap, seed=args.seed,
        compare=tuple(args.compare) if args.compare else None, top=args.top,
    )
    out = args.out or RunStore(args.run_dirs[0]).path("report")
    paths = write_report(report, out)
    print(format_verdicts(report), end="")
    for comparison in report.comparisons if args.compare else []:
        print(format_comparison(comparison), end="")
    print(f"report: {paths['html']} and {paths['md']}")
    return 0


def paradigms_command(args: argparse.Namespace) -> int:
    from raypriv.synth.catalogue import format_catalogue, format_paradigm

    print(format_paradigm(args.name) if args.name else format_catalogue(), end="")
    return 0


COMMANDS = {"audit": audit_command, "status": status_command, "report": report_command, "paradigms": paradigms_command}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="raypriv: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except AuditInterrupted as exc:
        print(f"raypriv: {exc}", file=sys.stderr)
        return 130
    except RayprivError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an environment problem the modules did not name themselves: still one line
        print(f"error: {' '.join(str(exc).split())}; check that the paths exist, are writable and have free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raypriv: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
