"""Every caption of the HTML report renders as Snakemake renders it (Jinja, then docutils) without a docutils
warning or error: a `|x|` read as a substitution, a broken link or a bad table shows as garbled text in the report."""
import re

import docutils.utils
import jinja2
import pytest
from conftest import ROOT
from docutils.core import publish_parts

CAPTIONS = sorted((ROOT / "workflow/report").glob("*.rst"))
RULES = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
# the link targets Snakemake appends to every caption (snakemake/report/__init__.py, `rst_links`): one per category
# and one per file of the report, named by its file name
TARGETS = sorted({name for name in re.findall(r'report\(\s*"[^"]*/([^"/]+)"', RULES)}
                 | set(re.findall(r'category="([^"]+)"', RULES)) | {"Workflow", "Statistics"})


class Config(dict):
    def __getitem__(self, key):
        return self.get(key, Config())


def render(text: str) -> str:
    links = "\n\n" + "\n".join(f".. _{t}: javascript:void(0)" for t in TARGETS)
    snakemake = type("Snakemake", (), {"config": Config(model=Config(base="m"), runs={"grpo": 1, "sft": 2})})
    rst = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(text + links).render(snakemake=snakemake)
    return publish_parts(rst, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["body"]


def test_the_captions_and_targets_are_found():
    assert len(CAPTIONS) > 20 and "findings.html" in TARGETS and "Findings" in TARGETS


@pytest.mark.parametrize("caption", CAPTIONS, ids=lambda p: p.name)
def test_caption_renders_without_docutils_warnings(caption):
    render(caption.read_text())


def test_a_bar_expression_outside_literals_is_caught():
    with pytest.raises(docutils.utils.SystemMessage):
        render("the unchanged fraction (|w' - w| <= 1e-3)")
