"""The `steel-tpu` command: parse arguments, call the run functions of the package, report errors plainly."""

import argparse
import sys

from steel_tpu import __version__, console
from steel_tpu.cli.commands import COMMANDS
from steel_tpu.cli.errors import user_error


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where they say something (not None, an off switch or []); examples kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def _common():
    """--verbose and --debug, accepted before or after the command (SUPPRESS: the later one does not reset)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's C++ log lines (hidden by default; useful when a device is not found)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the full traceback instead of one line")
    return common


def build_parser():
    """The parser of every command in commands.COMMANDS, each with its arguments, help and example."""
    common = _common()
    parser = argparse.ArgumentParser(prog="steel-tpu", description=__doc__, parents=[common],
                                     formatter_class=_Formatter, epilog="run `steel-tpu COMMAND --help` for examples")
    parser.add_argument("--version", action="version", version=f"steel-tpu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common],
                           formatter_class=_Formatter, epilog=f"example:\n  {command.example}")
        p.set_defaults(func=command.run)
        for flags, options in command.arguments:
            p.add_argument(*flags, **options)
    return parser


def parse(argv=None):
    """The parsed command line; with --runner, the arguments this parser does not know are Beam pipeline options
    (args.pipeline_flags, checked by Beam's own parser in steel_tpu.beam.options). Options a Beam run cannot honour
    are refused with --runner, never dropped."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    runner = getattr(args, "runner", None)
    if extra and not runner:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    given = [f"--{dest.replace('_', '-')}" for dest in COMMANDS[args.command].not_with_runner
             if runner and getattr(args, dest) is not None]
    if given:
        parser.error(f"{', '.join(given)} cannot be used with --runner (a Beam pipeline has no chunked resume and "
                     "its workers choose their own device): leave them out, or drop --runner")
    args.pipeline_flags = extra
    return args


def main(argv=None):
    args = parse(argv)
    debug = getattr(args, "debug", False)
    verbose = getattr(args, "verbose", False)
    console.quiet_tensorflow(verbose=verbose)
    if not verbose:
        console.drop_native_logs()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"steel-tpu {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        paths = [p for v in vars(args).values() for p in (v if isinstance(v, list) else [v]) if isinstance(p, str)]
        message = user_error(error, paths=paths)
        if message is None or debug:
            raise
        # Bad input is the user's to fix: one clear line naming the file/line/image, no traceback.
        print(f"steel-tpu {args.command}: error: {message}", file=sys.stderr)
        return 2
    return code or 0
