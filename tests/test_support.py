"""docs/support.md is what running every cell of the layer support table gives (tests/support_table.py)."""

from pathlib import Path

from .support_table import PAGE, table

PAGE_PATH = Path(__file__).resolve().parents[1] / "docs" / "support.md"


def test_the_support_page_is_what_the_code_does():
    made = PAGE.format(table=table())
    assert "WRONG" not in made  # hook products that differ from torch.func's would be a bug, not a table entry
    assert PAGE_PATH.read_text() == made, ("docs/support.md is stale: regenerate it with "
                                           "python -m tests.support_table > docs/support.md")
