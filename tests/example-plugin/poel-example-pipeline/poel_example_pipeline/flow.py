"""The pipeline as a workflow: what an application calls to run it for a record.

::

    record ──┬── fingerprint ──┬── merge
             └── bands ────────┘

``record`` is poel-records' ``process_new_record`` (the record notes its audio file);
``fingerprint`` and ``bands`` are this plugin's process jobs, released together when
``record`` succeeded and run side by side in child processes; ``merge`` runs once both
succeeded and writes what they returned into the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poel_host import Workflow

if TYPE_CHECKING:
    from poel_host import Queue

# The step names: the merge step reads its dependencies' results by these.
RECORD, FINGERPRINT, BANDS, MERGE = "record", "fingerprint", "bands", "merge"


def pipeline(record_id: int, audio: str) -> Workflow:
    """The workflow for one record and its audio file (a path every worker can read)."""
    flow = Workflow(f"audio pipeline, record {record_id}")
    record = flow.step(
        RECORD,
        "process_new_record",
        {"record_id": record_id, "record_type": "audio", "metadata": {"audio": audio}},
    )
    job = {"record_id": record_id, "audio": audio}
    prints = flow.step(FINGERPRINT, "pipeline.fingerprint", job, after=record)
    bands = flow.step(BANDS, "pipeline.separate_bands", job, after=record)
    flow.step(MERGE, "pipeline.merge", {"record_id": record_id}, after=[prints, bands])
    return flow


def enqueue_pipeline(queue: Queue, record_id: int, audio: str, *, connection: Any = None) -> int:
    """Enqueue the pipeline for a record (in your transaction with ``connection=``, the
    one that inserts the record, say); its workflow's id."""
    return queue.enqueue_workflow(pipeline(record_id, audio), connection=connection)
