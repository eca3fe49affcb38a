"""``dropens train | study | report``: the command line.

    dropens train data=mnist1d model=cnn1d method=dropout dropout.p=0.1 seed=0
    dropens train --cfg              # print the composed config and exit

Bad input prints one line (``error: <field>=<value> is not valid; choose one of: ...``) and exits
with status 2 before anything is trained or written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dropens.errors import ConfigError


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from dropens.config import compose, to_container
    from dropens.train import summarize, train

    cfg = compose(args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    record = train(to_container(cfg))
    print(summarize(record))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train and evaluate one run, writing its run record")
    p_train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dropout.p=0.3 seed=1")
    p_train.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p_train.set_defaults(func=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
