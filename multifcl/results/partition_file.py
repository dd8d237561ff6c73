"""`partition.json`: how many training samples of each class every client holds, per task.

Written at run start so a report can show what a partition (say Dirichlet beta = 0.05)
means without loading the data again.
"""

from __future__ import annotations

import numpy as np

from multifcl.data import FederatedStream

PARTITION_FILE = "partition.json"


def partition_counts(data: FederatedStream, num_clients: int) -> dict:
    """Per task: the task's stream classes and a clients x classes matrix of sample counts."""
    stream = data.stream
    tasks = []
    for task in stream:
        classes = np.arange(task.classes.start, task.classes.stop)
        counts = [
            np.bincount(stream.train_labels[part] - classes[0], minlength=len(classes)).tolist()
            for part in data.client_parts(task, num_clients)
        ]
        tasks.append({"task": task.index + 1, "classes": classes.tolist(), "counts": counts})
    return {"num_clients": num_clients, "class_names": list(stream.class_names), "tasks": tasks}
