"""Collect next-item results of several models into one table."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def summarize_next_item(results: Input[list[Artifact]], table: Output[Markdown]):
    """One Markdown table with every model's mean ± std row, built from their result.json files.

    Args:
        results: The result folders of the train_next_item tasks (fan-in).
        table: Output Markdown table (HR/NDCG/MRR@10/20, mean ± std over seeds).
    """
    import json
    from pathlib import Path

    from longrec.experiments.nextitem_cli import summary_table

    loaded = [json.loads(Path(r.path, "result.json").read_text()) for r in results]
    Path(table.path).write_text(summary_table(loaded) + "\n")
