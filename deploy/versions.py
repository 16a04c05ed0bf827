"""The versions that the image must share with packaging, read from the files that own them (no imports).

    python3 deploy/versions.py beam      # setup.py's BEAM_VERSION (deploy/build.sh passes it to docker build)
    python3 deploy/versions.py torch     # the torch pin of requirements/dev.txt

Plain Python 3 with the standard library only, so that it runs wherever gcloud runs.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def beam_version(setup_py: Path = ROOT / "setup.py") -> str:
    """The value of the module-level `BEAM_VERSION = "..."` assignment of setup.py."""
    for node in ast.parse(setup_py.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{setup_py} assigns no BEAM_VERSION")


def pinned(requirements: Path, package: str) -> str:
    """The version pinned with `package==X` (extras allowed) in a requirements file."""
    pattern = re.compile(rf"^{re.escape(package)}(\[[^\]]*\])?==([^\s;#]+)", re.IGNORECASE)
    for line in requirements.read_text().splitlines():
        m = pattern.match(line.strip())
        if m:
            return m.group(2)
    raise LookupError(f"{requirements} pins no {package}")


def torch_version(dev_txt: Path = ROOT / "requirements" / "dev.txt") -> str:
    return pinned(dev_txt, "torch")


def main(argv: list[str]) -> int:
    what = {"beam": beam_version, "torch": torch_version}
    if len(argv) != 1 or argv[0] not in what:
        print(f"usage: versions.py {{{'|'.join(what)}}}", file=sys.stderr)
        return 2
    print(what[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
