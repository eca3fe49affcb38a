"""``dropens train | study | report``: the command line.

    dropens train data=mnist1d model=cnn1d method=dropout dropout.p=0.1 seed=0
    dropens train --cfg              # print the composed config and exit
    dropens study quickstart         # every run of experiments/quickstart.yaml (resumes)
    dropens study quickstart launcher=slurm launcher.partition=gpu launcher.gpus_per_node=1
    dropens study quickstart --list  # the runs and which are complete; trains nothing
    dropens report quickstart        # reports/quickstart/ figures + tables, reports/REPORT.md
    dropens report --all             # every study, from results/ or the committed records
    dropens list                     # the studies, their claims, runs trained and committed

Bad input prints one line (``error: <field>=<value> is not valid; choose one of: ...``) and exits
with status 2 before anything is trained or written; so does a damaged file (naming it and the
fix). A run that cannot complete soundly (its loss became non-finite, another process trains it)
prints one line and exits with status 1, without ``DONE``. SIGTERM / SIGINT stop ``train`` and
``study`` at a safe point with one line and exit status 143 / 130; the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dropens.config import CONFIG_PATH_ENV
from dropens.errors import ConfigError, NoRecords


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from dropens.config import compose, to_container
    from dropens.train import summarize, train

    cfg = compose(args.overrides)
    if args.cfg:
        from dropens.study import search_dirs_text

        print("\n".join(f"# {line}" for line in search_dirs_text().splitlines()))
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    record = train(to_container(cfg))
    print(summarize(record))
    return 0


def _study(args: argparse.Namespace) -> int:
    from dropens.launchers import launch
    from dropens.study import describe, expand

    plan = expand(args.name, args.overrides)
    if args.match:
        plan = plan.select(args.match)
    if args.list:
        print(describe(plan))
        return 0
    return launch(plan)


def _report(args: argparse.Namespace) -> int:
    from dropens.paths import check_dir
    from dropens.reporting import build_report
    from dropens.study import study_names

    if args.all == bool(args.name):
        raise ConfigError("give one study name or --all (e.g. dropens report quickstart)")
    check_dir(args.out, "--out")
    for name in study_names() if args.all else [args.name]:
        try:
            build_report(
                name, args.overrides, reports_root=args.out, wandb=args.wandb, source=args.source
            )
        except NoRecords as err:
            if not args.all:
                raise
            print(f"report {name}: skipped, nothing to report yet ({err})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from dropens.study import overview

    print(overview(args.out, args.overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dropens.study import search_dirs_text

    try:
        where = "; ".join(search_dirs_text().splitlines())
    except ConfigError as err:
        where = str(err)
    parser = argparse.ArgumentParser(
        prog="dropens",
        description=__doc__.split("\n")[0],
        epilog=f"Reads (first wins) {where}. Your own configs/ and experiments/ in the current "
        f"directory, in --config-dir DIR or in ${CONFIG_PATH_ENV} extend and override the "
        "shipped ones.",
    )
    config_dir_help = (
        "a configs directory read before the shipped one (its sibling experiments/ too); "
        f"also ${CONFIG_PATH_ENV}"
    )
    parser.add_argument("--config-dir", action="append", default=[], help=config_dir_help)
    # also accepted after the command (dropens study NAME --config-dir DIR)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config-dir", action="append", default=argparse.SUPPRESS, help=config_dir_help
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train", parents=[common], help="train and evaluate one run, writing its run record"
    )
    p_train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dropout.p=0.3 seed=1")
    p_train.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p_train.set_defaults(func=_train)
    p_study = sub.add_parser(
        "study", parents=[common], help="run every run of a study (experiments/NAME.yaml)"
    )
    p_study.add_argument("name", help="study name, e.g. quickstart")
    p_study.add_argument(
        "overrides",
        nargs="*",
        help="run overrides for every run, seeds=[0,1], smoke=true, launcher=local|slurm, "
        "launcher.<key>=<value>",
    )
    p_study.add_argument("--list", action="store_true", help="list the runs and exit")
    p_study.add_argument(
        "--match",
        default=None,
        help="only the runs whose id contains this text (e.g. fashion_mnist)",
    )
    p_study.set_defaults(func=_study)
    p_report = sub.add_parser(
        "report", parents=[common], help="figures + tables of a study from its run records"
    )
    p_report.add_argument("name", nargs="?", help="study name, e.g. quickstart")
    p_report.add_argument("--all", action="store_true", help="every study of experiments/")
    p_report.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=("auto", "results", "records"),
        help="results: the run directories under results/NAME; records: the committed compact "
        "records reports/NAME/records.jsonl; auto (default): results when it has a complete run",
    )
    p_report.add_argument(
        "overrides",
        nargs="*",
        help="the study's overrides (smoke=true, seeds=[0], results_root=...)",
    )
    p_report.add_argument("--out", default="reports", help="reports root (default: reports)")
    p_report.add_argument(
        "--wandb", action="store_true", help="also log the figures to a W&B report run (offline)"
    )
    p_report.set_defaults(func=_report)
    p_list = sub.add_parser(
        "list",
        parents=[common],
        help="the studies: claim, planned runs, complete in results/ and in the records",
    )
    p_list.add_argument("overrides", nargs="*", help="e.g. results_root=/shared/results")
    p_list.add_argument("--out", default="reports", help="reports root (default: reports)")
    p_list.set_defaults(func=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may follow options (`study NAME --match x seed=1`): argparse leaves them unparsed
    args, extra = parser.parse_known_args(argv)
    _use_config_dirs(args.config_dir)
    if extra:
        if any(e.startswith("-") for e in extra) or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from dropens import signals
    from dropens.failures import RunFailed, Stopped

    try:
        with signals.guard():
            return args.func(args)
    except ConfigError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(_one_line(stop), file=sys.stderr, flush=True)
        return stop.exit_code


def _use_config_dirs(dirs: Sequence[str]) -> None:
    """Put ``--config-dir`` directories (absolute) first in ``$DROPENS_CONFIG_PATH``, where
    :func:`dropens.config.user_config_dirs` and every worker process of a study read them."""
    import os
    from pathlib import Path

    if not dirs:
        return
    for d in dirs:
        if not Path(d).expanduser().is_dir():
            print(f"error: --config-dir {d!r} is not a directory", file=sys.stderr)
            raise SystemExit(2)
    given = [str(Path(d).expanduser().resolve()) for d in dirs]
    rest = [e for e in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if e]
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join([*given, *rest])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
