"""Command line: ``python -m patches {check,build,workspace,export}``.

* ``check``     static checks CI runs on every change (series well formed,
                hunks apply to the installed wheel's files, torchgen accepts
                the patched yaml files, the new C++ files compile).
* ``build``     build (or reuse) the out-of-tree extension from the series.
* ``workspace`` create a git workspace with the series applied as commits.
* ``export``    write a workspace's commits back into patches/.
* ``fetch-base`` download base files the wheel lacks (LossNLL.cpp), for CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m patches", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="run the static checks")
    check.add_argument("--no-build", action="store_true", help="skip the compile check")

    build = commands.add_parser("build", help="build the out-of-tree extension")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--verbose", action="store_true")

    workspace = commands.add_parser("workspace", help="create a git workspace")
    workspace.add_argument("directory", type=Path)
    workspace.add_argument("--upstream", type=Path, default=None,
                           help="PyTorch checkout at BASE for files the wheel lacks (LossNLL.cpp)")
    workspace.add_argument("--no-apply", action="store_true", help="base commit only")

    commands.add_parser("fetch-base", help="download upstream base copies the wheel lacks (needs network)")

    export = commands.add_parser("export", help="write workspace commits to patches/")
    export.add_argument("directory", type=Path)
    export.add_argument("--force", action="store_true",
                        help="overwrite patches/ even if it changed since the workspace was made")

    args = parser.parse_args(argv)
    if args.command == "check":
        from . import check as check_module

        return check_module.run_checks(build=not args.no_build)
    if args.command == "build":
        from . import build as build_module

        path = build_module.build_extension(force=args.force, verbose=args.verbose)
        print(f"extension: {path}")
        return 0
    if args.command == "workspace":
        from . import workspace as workspace_module

        missing = workspace_module.make_workspace(args.directory, args.upstream, apply=not args.no_apply)
        for path in missing:
            print(f"note: no base copy of {path}; its patch hunks were excluded "
                  f"(put it under patches/.cache/base/{path} or pass --upstream)", file=sys.stderr)
        print(f"workspace ready: {args.directory}")
        return 0
    if args.command == "fetch-base":
        from . import workspace as workspace_module

        for path in workspace_module.fetch_base():
            print(f"fetched {path}")
        return 0
    if args.command == "export":
        from . import workspace as workspace_module

        for path in workspace_module.export(args.directory, force=args.force):
            print(f"wrote {path.name}")
        return 0
    return 2


def _run() -> int:
    from .build import BuildError
    from .series import SeriesError

    try:
        return main()
    except (SeriesError, BuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_run())
