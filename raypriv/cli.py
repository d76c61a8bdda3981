"""``raypriv`` command line.

``raypriv audit [--config FILE] [--out DIR] [--models N] [--paradigms a,b] [--seed S]``
runs (or resumes) an audit; flags override the config.
``raypriv status RUN_DIR [--config FILE]`` says what a run holds and lacks.
``raypriv report RUN_DIR [RUN_DIR ...] [--out DIR]`` compares the paradigms of
finished runs in one report.html (self-contained) and report.md.
``raypriv audit --until-decided --max-models N [--round K]`` trains in rounds of K
models and stops each paradigm once its verdict is decided (:mod:`raypriv.sequential`).
``raypriv plan [CONFIG]`` says, before any training, what the budget can show (:mod:`raypriv.planning`).
``raypriv paradigms [NAME]`` lists the paradigms (built-in and plugins) with their options.  Problems with the
input print one ``error:`` line and exit with status 2; an interrupted run
exits with 130 (Ctrl-C) or 143 (SIGTERM) and resumes when rerun.

``status`` and ``report`` read run directories that may come from elsewhere:
they import no plugin module a run's config.yaml names (``module:Class``
paradigms) unless given ``--trust-plugins``, and ``python -m raypriv.cli``
drops the working directory from ``sys.path`` for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from raypriv.errors import AuditInterrupted, RayprivError

MAX_BOOTSTRAP = 10_000  # resamples: ample for a 95% interval, and the weights (n_boot × n_audit) stay in memory
MAX_TOP = 1000
TRUST_HELP = ("import the plugin modules (module:Class paradigms) the run's config names; only for run directories "
              "you trust, since importing a module runs its code")
TERMINATED_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


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
    add_budget_flags(audit)
    status = commands.add_parser("status", help="what a run directory holds: complete and missing models")
    status.add_argument("run_dir", help="the run directory (an audit's --out)")
    status.add_argument("--config", help="check this config against the run (default: the run's own config.yaml)")
    status.add_argument("--trust-plugins", action="store_true", help=TRUST_HELP)
    report = commands.add_parser("report", help="compare the paradigms of finished runs: report.html and report.md")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories (an audit's --out)")
    report.add_argument("--out", help="output folder (default: the first run's report/)")
    report.add_argument("--attack", help="attack the verdicts and plots use (default: lira_online, else the first attack)")
    report.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="only this paired comparison (paradigm names, or run:paradigm where runs share one)")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the audit samples (default 1000)")
    report.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    report.add_argument("--top", type=int, default=20, help="most vulnerable samples shown per paradigm (default 20)")
    report.add_argument("--trust-plugins", action="store_true", help=TRUST_HELP)
    plan = commands.add_parser("plan", help="what a budget can show, before any training: the smallest TPR "
                               "separable from chance and the largest ε bound, per paradigm and FPR level")
    plan.add_argument("config", nargs="?", help="experiment YAML (default: the built-in digits-quick config)")
    plan.add_argument("--models", type=int, help="number of shadow models (overrides n_models)")
    plan.add_argument("--paradigms", help="comma-separated paradigms (overrides paradigms), e.g. real")
    add_budget_flags(plan)
    paradigms = commands.add_parser("paradigms", help="list the available paradigms (built-in and plugins) and their options")
    paradigms.add_argument("name", nargs="?", help="show this one in full (a name, NAME@tag, or module:Class)")
    return parser


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    """``--until-decided``, ``--max-models``, ``--round``, ``--bounded-multiple``: the config's ``budget`` section."""
    parser.add_argument("--until-decided", action="store_true",
                        help="train in rounds and stop each paradigm once its verdict is decided (budget.until: decided)")
    parser.add_argument("--max-models", type=int,
                        help="with --until-decided: the most models per paradigm (budget.max_models)")
    parser.add_argument("--round", type=int, help="with --until-decided: models per round, even, dividing --max-models "
                        "(budget.round, default 8)")
    parser.add_argument("--bounded-multiple", type=float,
                        help="with --until-decided: stop as 'bounded' once TPR/FPR is bounded under this multiple of "
                        "chance (budget.bounded_multiple, default 2)")


def budget_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The dotted overrides the budget flags give; ``--max-models`` sets ``n_models`` too (it is the plan's size)."""
    if args.max_models is not None and args.models is not None:
        raise RayprivError(
            f"--models {args.models} and --max-models {args.max_models} both set the model count; give --max-models "
            "with --until-decided, or --models alone for a fixed budget"
        )
    return {
        "budget.until": "decided" if args.until_decided else None,
        "budget.max_models": args.max_models,
        "n_models": args.max_models,
        "budget.round": args.round,
        "budget.bounded_multiple": args.bounded_multiple,
    }


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
    overrides.update({k: v for k, v in budget_overrides(args).items() if v is not None})
    config = load(args.config, overrides)
    result = run_audit(config, use_ray=not args.no_ray, show_progress=not args.quiet, force_unlock=args.force_unlock)
    print(result.summary, end="")
    print(f"results: {result.run_dir} (metrics.json, scores.parquet, logits/, models.parquet, roc.png)")
    return 0


def plugin_references(raw: dict) -> list[str]:
    """The ``module:Class`` paradigms (variants too) a config mapping names, as written; importing them runs code."""
    listed = raw.get("paradigms") if isinstance(raw, dict) else None
    if isinstance(listed, str):
        listed = listed.split(",")
    names = [p.strip() for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
    return [p for p in names if ":" in p.partition("@")[0]]


def refuse_plugins(configs: dict[str, dict]) -> None:
    """Without ``--trust-plugins``: refuse, before anything is imported, configs that name plugin modules.

    ``configs``: where each config comes from (a run's config.yaml, or a
    --config file) -> its mapping as read.  Checking such a config imports
    the plugin's module, which runs whatever code the run directory ships.
    """
    for where, raw in configs.items():
        found = plugin_references(raw)
        if found:
            raise RayprivError(
                f"{where} names plugin paradigm(s) {', '.join(map(repr, found[:3]))}, whose module(s) would be imported "
                "(running their code); pass --trust-plugins if you trust this run directory and its plugins"
            )


def _stored_configs(run_dirs: list[str]) -> dict[str, dict]:
    """Each run directory's config.yaml mapping, read as YAML only (nothing imported); {} where there is none."""
    from raypriv.run.directory import RunDirectory

    out = {}
    for run_dir in run_dirs:
        directory = RunDirectory(run_dir)
        out[directory.store.path("config.yaml")] = directory.stored_config_raw()
    return out


def status_command(args: argparse.Namespace) -> int:
    from raypriv.config import load, read_config_file
    from raypriv.run.directory import RunDirectory

    if not args.trust_plugins:
        configs = _stored_configs([args.run_dir])
        if args.config:
            configs[f"config file {args.config}"] = read_config_file(args.config)
        refuse_plugins(configs)
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
    if not args.trust_plugins:
        refuse_plugins(_stored_configs(args.run_dirs))
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


def plan_command(args: argparse.Namespace) -> int:
    from raypriv.config import load
    from raypriv.planning import format_plan

    overrides = {"n_models": args.models, "paradigms": args.paradigms}
    overrides.update({k: v for k, v in budget_overrides(args).items() if v is not None})
    print(format_plan(load(args.config, overrides)), end="")
    return 0


def paradigms_command(args: argparse.Namespace) -> int:
    from raypriv.synth.catalogue import format_catalogue, format_paradigm

    print(format_paradigm(args.name) if args.name else format_catalogue(), end="")
    return 0


COMMANDS = {"audit": audit_command, "status": status_command, "report": report_command, "plan": plan_command,
            "paradigms": paradigms_command}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is, so that every cleanup (Ray's shutdown, the lease) runs."""


class _SigtermHandler:
    """While a command runs: the first SIGTERM raises :class:`Terminated`; a second one lets the cleanup finish."""

    def __init__(self) -> None:
        self.received = False
        self.previous = None

    def __call__(self, signum, frame) -> None:
        if self.received:
            return
        self.received = True
        raise Terminated()

    def __enter__(self) -> _SigtermHandler:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="raypriv: %(message)s")
    with _SigtermHandler() as sigterm:
        try:
            return COMMANDS[args.command](args)
        except (AuditInterrupted, KeyboardInterrupt) as exc:
            if sigterm.received:
                print("raypriv: terminated; rerun the same command to resume", file=sys.stderr)
                return TERMINATED_EXIT
            if isinstance(exc, AuditInterrupted):
                print(f"raypriv: {exc}", file=sys.stderr)
            else:
                print("raypriv: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        except RayprivError as exc:
            if sigterm.received:  # an error the stop itself caused (a worker killed mid-call)
                print("raypriv: terminated; rerun the same command to resume", file=sys.stderr)
                return TERMINATED_EXIT
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # an environment problem the modules did not name themselves: still one line
            print(f"error: {' '.join(str(exc).split())}; check that the paths exist, are writable and have free space",
                  file=sys.stderr)
            return 2


def _untrusted_sys_path(argv: list[str]) -> None:
    """``python -m`` puts the working directory first on sys.path: for status and report, take it off.

    A run directory from elsewhere could otherwise ship modules (a plugin, or
    one named like a library) that the command would import.
    ``--trust-plugins`` keeps it.
    """
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in ("status", "report") and "--trust-plugins" not in argv:
        here = os.getcwd()
        sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]


if __name__ == "__main__":
    _untrusted_sys_path(sys.argv[1:])
    sys.exit(main())
