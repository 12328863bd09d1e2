"""Knowledge distillation: train the configured model (the student) to match a teacher as well.

Design: distillation is a ``distill:`` section of any run whose task can distil (classification,
image classification, SFT: :attr:`~tunelab.tasks.base.TaskSpec.can_distill`), not a task of its
own. The task stays what it is -- its data, metrics, predictions, exports and compare all work
unchanged -- and only the training step changes: :class:`~tunelab.distill.step.DistillStep` wraps
the task's step and adds the teacher's term to its loss. A task offers
``distill_outputs(model, batch, features)``: the logits at the positions that count (rows; labelled
tokens of a causal LM), its own loss, and optionally the features its head reads.

* :mod:`tunelab.distill.losses` -- forward/reverse KL, generalised JSD, the combined loss;
* :mod:`tunelab.distill.teacher` -- the teacher (a finished run or a model) and its checks;
* :mod:`tunelab.distill.step` -- the step, with the teacher's outputs cached once when they are
  fixed per row;
* :mod:`tunelab.models.shrink` -- a smaller student from the teacher's architecture
  (``model.num_layers`` / ``model.keep_layers``, DistilBERT's layer-dropping initialisation).
"""

from tunelab.distill.step import DistillStep, check_fit, distill_step
from tunelab.distill.teacher import Teacher, check_distill_config, load_teacher

__all__ = ["DistillStep", "Teacher", "check_distill_config", "check_fit", "distill_step", "load_teacher"]
