"""``python -m weights list`` prints the registry; ``python -m weights fetch NAME`` downloads (+ converts) ahead of
time and prints the path of the file ready to load."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from utils.cli import Parser
from utils.errors import run_cli
from weights import hub, registry


def _sub_parser(**kwargs: Any) -> Parser:
    """argparse makes each sub-command's parser with ``prog="python -m weights fetch"``: keep that as its command."""
    return Parser(kwargs["prog"].removeprefix("python "), **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser("-m weights", description="Pretrained SSD models by name.")
    # sub-commands word their usage errors the same way (one line), pointing at their own --help
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_sub_parser)
    sub.add_parser("list", help="print the registry (name, classes, source, accuracy, size, checksum, URL)")
    fetch = sub.add_parser("fetch", help="download, verify and convert a model into torch.hub's cache; print its path")
    fetch.add_argument("name", choices=registry.names(), metavar="NAME", help="one of: " + ", ".join(registry.names()))
    fetch.add_argument("--sha256", default=None,
                       help="expected SHA-256 of the published file (needed where the publisher gives none)")
    fetch.add_argument("--base-url", default=None,
                       help=f"mirror holding the files under their published names (default: ${hub.BASE_URL_ENV} "
                            "or each publisher's URL)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(registry.table())
        print(f"cache: {hub.cache_dir()}")
        return 0
    print(hub.fetch(args.name, base_url=args.base_url, sha256=args.sha256))
    return 0


if __name__ == "__main__":
    run_cli(main)
