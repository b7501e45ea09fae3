"""The repository stands alone: nothing cites design notes or course documents a clone lacks."""

import subprocess

from tests.conftest import ROOT


# Spelled in pieces so this file does not match itself. (CI's optional container check may use
# the CI machine's tools; that is an environment, not a document cited.)
CITATIONS = ("ARCHITECTURE" + ".md", "seed " + "00", "seeds" + "/")


def test_no_file_cites_documents_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".html", ".cfg") and path.name != "Makefile":
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if any(ref in text for ref in CITATIONS):
            offenders.append(rel)
    assert offenders == [], offenders
