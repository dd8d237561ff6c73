"""`partition.json`: how many training samples of each class every client holds, per task.

Written at run start so a report can show what a partition (say Dirichlet beta = 0.05)
means without loading the data again.
"""

from __future__ import annotations

import numpy as np

from multifcl.data import FederatedStream


def partition_counts(
    data: FederatedStream, num_clients: int, held: list[int] | None = None
) -> dict:
    """Per task: the task's stream classes, how many clients take part in it (`clients`:
    the first k_t partition ids, `clients-per-task`) and a clients x classes matrix of
    sample counts, one row per partition in `held` (default: all `num_clients`), listed in
    `partition_ids`; a client that has not joined yet has a row of zeros."""
    stream = data.stream
    held = list(range(num_clients)) if held is None else list(held)
    tasks = []
    for task in stream:
        classes = np.arange(task.classes.start, task.classes.stop)
        parts = data.client_parts(task, num_clients)
        empty = np.empty(0, dtype=np.int64)
        counts = [
            np.bincount(
                stream.train_labels[parts[i] if i < len(parts) else empty] - classes[0],
                minlength=len(classes),
            ).tolist()
            for i in held
        ]
        tasks.append(
            {
                "task": task.index + 1,
                "classes": classes.tolist(),
                "clients": len(parts),
                "counts": counts,
            }
        )
    return {
        "num_clients": num_clients,
        "partition_ids": held,
        "class_names": list(stream.class_names),
        "tasks": tasks,
    }
