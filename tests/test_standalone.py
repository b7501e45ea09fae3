"""The repository stands alone: nothing cites design notes or course documents a clone lacks."""

import re
import subprocess

from tests.conftest import ROOT


# Spelled in pieces so this file does not match itself. (CI's optional container check may use
# the CI machine's tools; that is an environment, not a document cited.)
CITATIONS = ("seed " + "00", "seeds" + "/")
# The design document is docs/ARCHITECTURE.md, cited by that path; inside docs/ a relative
# Markdown link to it works too. The bare file name (with a section number, say) is how notes
# outside the repository used to be cited.
BARE_ARCHITECTURE = re.compile(r"(?<!docs/)ARCHITECTURE" + r"\.md")
DOCS_PATH = re.compile(r"\bdocs/[\w./-]*\w\.md\b")


def project_texts() -> dict[str, str]:
    """The text files a clone has: tracked ones and new ones not ignored (not yet committed)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for rel in files:
        path = ROOT / rel
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".html", ".cfg") and path.name != "Makefile":
            continue
        if path.is_file():
            out[rel] = path.read_text(encoding="utf-8", errors="ignore")
    return out


def test_no_file_cites_documents_outside_the_repository():
    offenders = []
    for rel, text in project_texts().items():
        if any(ref in text for ref in CITATIONS):
            offenders.append(rel)
        for match in BARE_ARCHITECTURE.finditer(text):
            relative_link = rel.startswith("docs/") and text[max(0, match.start() - 2):match.start()] == "]("
            if not relative_link:
                offenders.append(f"{rel}: {text[max(0, match.start() - 20):match.end() + 10]!r}")
    assert offenders == [], offenders


def test_cited_docs_exist():
    """Every docs/<name>.md a file names is in the repository."""
    texts = project_texts()
    missing = sorted({f"{rel}: {m}" for rel, text in texts.items() for m in DOCS_PATH.findall(text) if m not in texts})
    assert missing == [], missing
