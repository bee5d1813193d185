"""``diff2scene models [NAME]``: the model profiles this installation finds, and from where.

Answers "why is profile X unknown here?" without building anything: the listing names each
profile's file and the search step that found it, then every directory searched.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model profiles (segmenter.profile) found, and where",
        description=(
            "List the 2D model profiles a config's segmenter.profile can name, each with its "
            "YAML file and where it was found ($DIFF2SCENE_MODELS_DIR, the package's own "
            "profiles, or the share/diff2scene/models of an ament prefix on "
            "$AMENT_PREFIX_PATH). With NAME, print only the file NAME resolves to."
        ),
    )
    parser.add_argument("name", nargs="?", default=None, help="a profile name or YAML path")
    parser.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from diff2scene.segmentation.profile_lookup import find_profile, known_profiles, search_dirs

    if args.name is not None:
        print(find_profile(args.name))
        return 0
    known = known_profiles()
    width = max((len(name) for name in known), default=0)
    for name, (path, directory) in known.items():
        print(f"{name:<{width}}  {path}  ({directory.origin})")
    print("searched, first match wins:")
    for directory in search_dirs():
        print(f"  {directory.path}  ({directory.origin})")
    return 0 if known else 1
