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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multifcl.data import InMemoryImages, Task
from multifcl.losses.distillation import distillation_loss
from multifcl.methods.base import ClientUpdate, State
from multifcl.methods.finetune import FinetuneMethod, TrainableTop

TEACHER_PREFIX = "teacher/"


class LwFMethod(FinetuneMethod):
    name = "lwf"
    runs_asynchronously = False  # the teacher is the previous task's global model

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.teacher = TrainableTop(backbone, self.num_classes, config.seed, self.etf_map)
        self.teacher.requires_grad_(False).eval()
        self._old_classes = 0  # classes of earlier tasks, for the client's current task

    # --- state ---------------------------------------------------------------------------
    def initial_state(self) -> State:
        model = super().initial_state()
        return {**model, **_as_teacher(model)}

    def end_task(self, state: State, task: Task) -> State:
        """The task's final model becomes the next task's teacher."""
        return {**state, **_as_teacher(_model_part(state))}

    def _load(self, state: State) -> None:
        super()._load(_model_part(state))

    def _load_teacher(self, state: State) -> None:
        """The previous task's final model, stored in `teacher/` at that task's end."""
        device = self.backbone.device
        weights = {
            key.removeprefix(TEACHER_PREFIX): torch.from_numpy(value).to(device)
            for key, value in state.items()
            if key.startswith(TEACHER_PREFIX)
        }
        self.teacher.load_state_dict(weights, strict=False)

    # --- client --------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._old_classes = task.classes.start
        if self._old_classes:
            self._load_teacher(state)
        return super().train_client(state, data, task, seed)

    def _loss(self, pixels: torch.Tensor, labels: torch.Tensor, seen: int) -> torch.Tensor:
        old = self._old_classes
        if not old:
            return super()._loss(pixels, labels, seen)
        hidden = self.model.trunk_hidden(pixels)  # the frozen trunk is shared by both models
        features = self.model.top_features(hidden)
        with torch.no_grad():
            teacher_logits = self.teacher.head(self.teacher.top_features(hidden))
        student_logits = self.model.head(features)
        distillation = distillation_loss(
            student_logits[:, :old], teacher_logits[:, :old], self.config.lwf_temperature
        )
        if self.etf or self.config.lwf_ce_classes == "seen":
            task_loss = self._features_loss(features, labels, seen)
        else:  # the old classes' logits are left to the distillation alone
            task_loss = F.cross_entropy(student_logits[:, old:seen], labels - old)
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
