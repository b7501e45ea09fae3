"""Rebuild docs/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

    python docs/plots/build_offline_template.py            # `npm pack`s the pinned versions
    python docs/plots/build_offline_template.py --from DIR # or reads DIR/<name>-<version>.tgz

dvc-render's default page loads the three libraries from a CDN (blank plots without internet);
this one carries their minified builds (README.md beside it: versions, licenses). DVC fills
`{plot_divs}` (and `{refresh_tag}`); the page has no `{scripts}` placeholder, which is where DVC
would put its CDN <script src> tags.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "offline.html"
# The major versions dvc-render's default page loads (vega 5, vega-lite 5, vega-embed 6).
PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}
REPOS = {"vega": "https://github.com/vega/vega", "vega-lite": "https://github.com/vega/vega-lite",
         "vega-embed": "https://github.com/vega/vega-embed"}
# What DVC's template filling would replace, and what would end an inline <script> early.
FORBIDDEN = ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script", "<!--")

PAGE = """<!DOCTYPE html>
<!-- DVC plots page for offline use: vega {vega}, vega-lite {vega-lite} and vega-embed {vega-embed}
     inlined (BSD-3-Clause, Copyright (c) 2015, University of Washington Interactive Data Lab;
     docs/plots/README.md). Rebuilt by docs/plots/build_offline_template.py; do not edit by hand. -->
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def npm_pack(dest: Path) -> None:
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    subprocess.run(["npm", "pack", "--silent", *specs], cwd=dest, check=True, stdout=subprocess.DEVNULL)


def read_build(tgz: Path, member: str) -> str:
    with tarfile.open(tgz) as tar:
        fh = tar.extractfile(member)
        if fh is None:
            raise SystemExit(f"{tgz}: no {member}")
        return io.TextIOWrapper(fh, encoding="utf-8").read()


def script(name: str, version: str, code: str) -> str:
    lines = [line for line in code.splitlines() if not line.startswith("//# sourceMappingURL=")]
    code = "\n".join(lines).strip()
    bad = [s for s in FORBIDDEN if s in code]
    if bad:
        raise SystemExit(f"{name}@{version}: the build contains {bad}; it cannot be inlined as is")
    header = (f"/*! {name}@{version} | BSD-3-Clause | Copyright (c) 2015, University of Washington "
              f"Interactive Data Lab | {REPOS[name]} */")
    return f"    <script>{header}\n{code}\n    </script>"


def build(source: Path) -> str:
    scripts = []
    for name, version in PACKAGES.items():
        tgz = source / f"{name}-{version}.tgz"
        if not tgz.exists():
            raise SystemExit(f"{tgz}: missing (npm pack {name}@{version})")
        scripts.append(script(name, version, read_build(tgz, BUILDS[name])))
    return PAGE.format(scripts="\n".join(scripts), **PACKAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="directory with the npm tarballs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.source:
        page = build(args.source)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            npm_pack(Path(tmp))
            page = build(Path(tmp))
    args.out.write_text(page, encoding="utf-8")
    print(f"{args.out}: {len(page.encode()) // 1024} KiB "
          + ", ".join(f"{n}@{v}" for n, v in PACKAGES.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
