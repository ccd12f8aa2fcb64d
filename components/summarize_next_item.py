"""Collect next-item results of several models into one table."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def summarize_next_item(results: Input[list[Artifact]], table: Output[Markdown]):
    """Concatenate every model's mean ± std row into one Markdown table.

    Args:
        results: The result folders of the train_next_item tasks (fan-in).
        table: Output Markdown table (HR/NDCG/MRR@10/20, mean ± std over seeds).
    """
    from pathlib import Path

    rows = [Path(r.path, "summary.md").read_text().strip().splitlines() for r in results]
    lines = rows[0][:2] + [row[2] for row in rows]
    Path(table.path).write_text("\n".join(lines) + "\n")
