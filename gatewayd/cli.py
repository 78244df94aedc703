"""The command line: ``gatewayd run | replay | status | audit | check-config | demo | version``.

Only this module configures logging and turns errors into exit codes: every
GatewayError becomes one clear line on stderr and its class's exit code; a
traceback reaches the user only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gatewayd import __version__
from gatewayd.errors import ConfigError, GatewayError

logger = logging.getLogger("gatewayd")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 12
EXIT_BROKEN_CHAIN = 13
EXIT_INTERRUPTED = 130

SAMPLES = Path(__file__).parent / "samples"
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override a setting, e.g. pipeline.chunk_size=64")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatewayd", description="Telemetry daemon for field gateways.")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("replay", help="run captured files through the pipeline")
    _common(p)
    p.add_argument("--format", choices=("auto", "nmea", "pcd", "las", "geojson"), default="auto")
    p.add_argument("--source", metavar="NAME", help="source name (default: each file's stem)")
    p.add_argument("--source-crs", metavar="CRS", help="CRS of PCD points (and LAS without one)")
    p.add_argument("--target-crs", metavar="CRS", help="CRS of the results")
    p.add_argument("--points-dir", metavar="DIR", type=Path, help="write processed points here")
    p.add_argument("--summary", metavar="FILE", type=Path, help="write the summary JSON here")
    p.add_argument("-o", "--output", metavar="FILE", default="-", help="records (default: -)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=Path)

    p = sub.add_parser("run", help="run the daemon: serial and MQTT in, results out over MQTT")
    _common(p)

    p = sub.add_parser("status", help="show the local daemon's state (no broker needed)")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the status document as JSON")

    p = sub.add_parser("audit", help="check the lineage audit trail")
    asub = p.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    v = asub.add_parser("verify", help="prove the audit log intact, or name its first broken line")
    _common(v)
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument("path", nargs="?", type=Path, metavar="PATH",
                   help="a log directory or one file (default: the configured audit directory)")

    p = sub.add_parser("check-config", help="print the effective configuration and its origins")
    _common(p)

    p = sub.add_parser("demo", help="run the daemon live on a simulated vehicle, with a live view")
    _common(p)
    p.add_argument("--duration", metavar="SECONDS", type=float,
                   help="stop after this long (default: Ctrl-C on a terminal, else 20 s)")
    p.add_argument("--replay", action="store_true", help="replay the bundled sample capture")

    sub.add_parser("version", help="print versions of gatewayd, GEOS and PROJ")
    return parser


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gatewayd.config import load_config

    return load_config(args.config, args.overrides, os.environ)


def _replay(args: argparse.Namespace) -> int:
    from gatewayd.replay import ReplayOptions, replay

    config = _load(args)
    for path in args.inputs:
        if not path.exists():
            raise ConfigError(f"input not found: {path}")
    output = sys.stdout if args.output == "-" else open(args.output, "w")  # noqa: SIM115
    try:
        options = ReplayOptions(
            inputs=tuple(args.inputs), format=args.format, source=args.source,
            source_crs=args.source_crs, target_crs=args.target_crs,
            points_dir=args.points_dir, output=output, progress=sys.stderr.isatty(),
        )
        summary = _run(replay(config, options))
    finally:
        if output is not sys.stdout:
            output.close()
    text = json.dumps(summary.as_dict(), indent=2)
    if args.summary:
        args.summary.write_text(text + "\n")
    else:
        print(text, file=sys.stderr)
    return EXIT_PARTIAL if summary.dead_letters else EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    if not args.replay:
        from gatewayd import demo

        return demo.main(args.duration, config=args.config, overrides=args.overrides)
    from gatewayd.replay import ReplayOptions, replay

    overrides = [f"zones.file={SAMPLES / 'zones.geojson'}", *args.overrides]
    config = _load(argparse.Namespace(config=args.config, overrides=overrides))
    inputs = tuple(sorted(SAMPLES.glob("capture*")))
    print(f"gatewayd {__version__} demo: replaying {len(inputs)} bundled captures "
          f"({', '.join(p.name for p in inputs)}) with the zones of zones.geojson",
          file=sys.stderr)
    options = ReplayOptions(inputs=inputs, target_crs="EPSG:32632", output=sys.stdout)
    summary = _run(replay(config, options))
    print(json.dumps(summary.as_dict(), indent=2), file=sys.stderr)
    return EXIT_OK


def _run_daemon(args: argparse.Namespace) -> int:
    from gatewayd import forkserver

    config = _load(args)
    # The workers' server imports their modules while this process imports its own.
    forkserver.start(["gatewayd.processing"])
    from gatewayd.daemon import Daemon
    from gatewayd.journal import configure

    configure(config.log.format, "debug" if args.debug else config.log.level,
              environ=os.environ, debug=args.debug)
    return _run(Daemon(config, config_path=args.config, overrides=args.overrides,
                       environ=os.environ).run())


def _status(args: argparse.Namespace) -> int:
    from gatewayd.status import read_status, render_status

    config = _load(args)
    status, age = read_status(config)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render_status(status, age, config.daemon.status_interval_s))
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from gatewayd.audit import verify

    path = args.path if args.path is not None else Path(_load(args).audit_dir)
    result = verify(path)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.describe())
    return EXIT_OK if result.ok else EXIT_BROKEN_CHAIN


def _check_config(args: argparse.Namespace) -> int:
    from gatewayd.config import render_config

    print(render_config(_load(args)))
    return EXIT_OK


def _versions() -> int:
    from gatewayd import geometry

    v = geometry.library_versions()
    print(f"gatewayd {__version__}\nGEOS {v['geos']} (built against {v['geos_build']})\n"
          f"PROJ {v['proj']}")
    return EXIT_OK


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from gatewayd.loop import run

    return run(coro)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="gatewayd: %(levelname)s: %(message)s" if not debug
        else "%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    _configure_logging(debug)
    try:
        args = build_parser().parse_args(argv)
        commands = {"replay": _replay, "run": _run_daemon, "status": _status, "audit": _audit,
                    "check-config": _check_config,
                    "demo": _demo}
        if args.command == "version":
            return _versions()
        return commands[args.command](args)
    except GatewayError as exc:
        if debug:
            logger.exception("%s", exc)
        print(f"gatewayd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        print(f"gatewayd: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_RUNTIME
