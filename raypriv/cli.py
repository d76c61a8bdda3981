"""``raypriv`` command line.

``raypriv audit [--config FILE] [--out DIR] [--models N] [--paradigms a,b] [--seed S]``
runs (or resumes) an audit; flags override the config.  Problems with the
input print one ``error:`` line and exit with status 2; an interrupted run
exits with 130 and resumes when rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raypriv.errors import RayprivError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypriv", description="Membership-inference audits of synthetic-data training.")
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="run or resume an audit (default: real-data training on digits)")
    audit.add_argument("--config", help="experiment YAML (default: the built-in digits-quick config)")
    audit.add_argument("--out", help="run directory (overrides out_dir)")
    audit.add_argument("--models", type=int, help="number of shadow models (overrides n_models)")
    audit.add_argument("--paradigms", help="comma-separated paradigms (overrides paradigms), e.g. real")
    audit.add_argument("--seed", type=int, help="experiment seed (overrides seed)")
    audit.add_argument("--no-ray", action="store_true", help="train in this process instead of on Ray actors")
    audit.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def audit_command(args: argparse.Namespace) -> int:
    from raypriv.config import load_config
    from raypriv.runner import run_audit

    overrides = {"out_dir": args.out, "n_models": args.models, "paradigms": args.paradigms, "seed": args.seed}
    config = load_config(args.config, overrides)
    result = run_audit(config, use_ray=not args.no_ray, show_progress=not args.quiet)
    print(result.summary, end="")
    print(f"results: {result.run_dir} (metrics.json, scores.parquet, logits/, models.parquet, roc.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="raypriv: %(message)s")
    from raypriv.runner import AuditInterrupted

    try:
        return audit_command(args)
    except AuditInterrupted as exc:
        print(f"raypriv: {exc}", file=sys.stderr)
        return 130
    except RayprivError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raypriv: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
