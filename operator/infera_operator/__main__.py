"""``python -m infera_operator``: run the operator (kopf) with infera's flags and environment.

    python -m infera_operator --all-namespaces --standalone --liveness=http://0.0.0.0:8080/healthz
    python -m infera_operator --namespace team-a --namespace team-b --standalone

See ``options.py`` for the flags and the INFERA_* environment variables.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import kopf

from infera_operator import __version__
from infera_operator.options import OperatorOptions, OptionsError, parse_args


def setup_logging(options: OperatorOptions) -> None:
    kopf.configure(
        debug=options.log_level == "debug",
        quiet=options.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if options.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object" if options.log_format == "json" else None,
    )
    logging.getLogger().setLevel(options.log_level.upper())
    # The kubernetes client logs every request at debug level; keep that out unless asked for.
    if options.log_level != "debug":
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        # kopf logs every handled watch event ("Handler ... succeeded"); the operator logs what it did.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_args(argv)
    except OptionsError as e:
        print(f"infera-operator: {e}", file=sys.stderr)
        return 2
    setup_logging(options)
    import infera_operator.handlers  # noqa: F401  (registers the kopf handlers)

    logging.getLogger("infera_operator").info(
        "infera operator %s starting: %s, %s",
        __version__,
        "all namespaces" if options.clusterwide else "namespaces " + ",".join(options.namespaces),
        "standalone" if options.standalone else "with peering",
    )
    kopf.run(
        standalone=options.standalone,
        clusterwide=options.clusterwide,
        namespaces=() if options.clusterwide else list(options.namespaces),
        liveness_endpoint=options.liveness,
        memo=kopf.Memo(options=options),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
