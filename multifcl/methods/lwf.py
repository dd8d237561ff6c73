"""FedLwF: fine-tuning (FedAvg) plus distillation towards the previous task's global model.

Learning without Forgetting (Li and Hoiem, 2016) in its usual class-incremental form: from
task 2 on, the loss on a batch is a cross-entropy plus `lwf-lambda` x KL between the
teacher's and the student's temperature-`lwf-temperature` softmax over the old classes'
logits, as PyCIL's LwF (lamda = 3, T = 2 by default, no T^2 factor). The teacher is the
global model at the end of the previous task. The cross-entropy covers the current task's
classes (`lwf-ce-classes = "task"`, as PyCIL's LwF), so the old classes' logits are shaped
by the distillation alone; `"seen"` keeps fine-tuning's loss over all seen classes, which
pushes the old logits down (on offline CIFAR-10 with
efficientnet-lite0, 5 tasks, 100 images per class: Last 39.3 with "task" against 10.0 with
"seen"). With `head = "etf"` the loss is fine-tuning's `etf-loss` towards the fixed vertices.

Clients keep nothing between rounds (Ray actors are shared, runs resume from the global
state), so the teacher travels in the global state under `teacher/`: at the end of each
task (`end_task`) the server copies the global model there. This doubles the bytes sent to
clients, not the bytes they upload (only the model is uploaded).

Asynchronous streams (docs/asynchronous.md), where clients train different tasks in one
round and no task ends for all of them at once: the teacher is the global model the client
receives in the round (no `teacher/` is kept), and the distillation covers every class
outside the client's current task, the cross-entropy that task's classes
(`lwf-ce-classes = "task"`; `"seen"` is fine-tuning's loss over global classes
0 ... (j + 1) k - 1 of task j, as `finetune` asynchronously).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multifcl.client_stream_schedule import is_asynchronous
from multifcl.data import InMemoryImages, Task
from multifcl.losses.distillation import distillation_loss
from multifcl.methods.base import ClientUpdate, State
from multifcl.methods.finetune import FinetuneMethod, TrainableTop

TEACHER_PREFIX = "teacher/"


class LwFMethod(FinetuneMethod):
    name = "lwf"
    runs_asynchronously = True  # then the teacher is the round's global model

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.teacher = TrainableTop(backbone, self.num_classes, config.seed, self.etf_map)
        self.teacher.requires_grad_(False).eval()
        self.asynchronous = is_asynchronous(config)
        self._task_classes = range(0)  # the client's current task's classes
        self._distilled = torch.zeros(0, dtype=torch.long)  # the classes the teacher covers

    # --- state ---------------------------------------------------------------------------
    def initial_state(self) -> State:
        model = super().initial_state()
        return model if self.asynchronous else {**model, **_as_teacher(model)}

    def end_task(self, state: State, task: Task) -> State:
        """The task's final model becomes the next task's teacher (synchronous streams)."""
        if self.asynchronous:
            return state
        return {**state, **_as_teacher(_model_part(state))}

    def _load(self, state: State) -> None:
        super()._load(_model_part(state))

    def _load_teacher(self, state: State) -> None:
        """The previous task's final model, stored in `teacher/` at that task's end."""
        weights = {
            key.removeprefix(TEACHER_PREFIX): value
            for key, value in state.items()
            if key.startswith(TEACHER_PREFIX)
        }
        self.teacher.load_state_dict(self._torch_state(weights), strict=False)

    # --- client --------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._task_classes = task.classes
        if self.asynchronous:  # every class outside the task, towards the received model
            others = [c for c in range(self.num_classes) if c not in task.classes]
            self._distilled = torch.tensor(others, dtype=torch.long)
            self.teacher.load_state_dict(self._torch_state(_model_part(state)), strict=False)
        else:  # the earlier tasks' classes, towards the previous task's final model
            self._distilled = torch.arange(task.classes.start)
            if len(self._distilled):
                self._load_teacher(state)
        return super().train_client(state, data, task, seed)

    def _torch_state(self, arrays: State) -> dict[str, torch.Tensor]:
        device = self.backbone.device
        return {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}

    def _loss(self, pixels: torch.Tensor, labels: torch.Tensor, seen: int) -> torch.Tensor:
        distilled = self._distilled.to(pixels.device)
        if not len(distilled):
            return super()._loss(pixels, labels, seen)
        hidden = self.model.trunk_hidden(pixels)  # the frozen trunk is shared by both models
        features = self.model.top_features(hidden)
        with torch.no_grad():
            teacher_logits = self.teacher.head(self.teacher.top_features(hidden))
        student_logits = self.model.head(features)
        distillation = distillation_loss(
            student_logits[:, distilled], teacher_logits[:, distilled], self.config.lwf_temperature
        )
        if self.etf or self.config.lwf_ce_classes == "seen":
            task_loss = self._features_loss(features, labels, seen)
        else:  # the other classes' logits are left to the distillation alone
            first, last = self._task_classes.start, self._task_classes.stop
            task_loss = F.cross_entropy(student_logits[:, first:last], labels - first)
        return task_loss + self.config.lwf_lambda * distillation

    # --- server --------------------------------------------------------------------------
    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """FedAvg of the model; the teacher is kept."""
        teacher = {key: value for key, value in state.items() if key.startswith(TEACHER_PREFIX)}
        return {**super().merge(state, updates), **teacher}


def _model_part(arrays: State) -> State:
    """The student model's arrays: everything but the teacher."""
    return {key: value for key, value in arrays.items() if not key.startswith(TEACHER_PREFIX)}


def _as_teacher(model: State) -> State:
    """A copy of `model`'s arrays under `teacher/`."""
    return {TEACHER_PREFIX + key: value.copy() for key, value in model.items()}
