"""Head tasks behind one registry; importing this package registers the built-in ones (depth, seg, pose).

The interface is ``tasks/base.py``; a new head is one file with a ``HeadTask`` subclass decorated
with ``@register_head_task`` (or an entry point in the ``wherevit.head_tasks`` group).
"""

# registration order is the evaluation table's column order
# isort: off
from wherevit.train.downstream.tasks import depth as _depth  # noqa: F401
from wherevit.train.downstream.tasks import seg as _seg  # noqa: F401
from wherevit.train.downstream.tasks import pose as _pose  # noqa: F401
# isort: on
from wherevit.train.downstream.tasks.base import (
    ENTRY_POINT_GROUP,
    HEAD_FORMAT,
    HEAD_TASKS,
    Column,
    HeadSplit,
    HeadTask,
    HeadTaskConfig,
    create_head_task,
    head_task_names,
    register_head_task,
)

__all__ = ["ENTRY_POINT_GROUP", "HEAD_FORMAT", "HEAD_TASKS", "Column", "HeadSplit", "HeadTask", "HeadTaskConfig",
           "create_head_task", "head_task_names", "register_head_task", "get_head_task", "task_from_record"]


def get_head_task(name: str) -> HeadTask:
    """Head task ``name`` with its default options."""
    return HEAD_TASKS.get(name)()


def task_from_record(record) -> HeadTask:
    """The task a saved head (its ``HeadSection`` record) was trained for."""
    return HEAD_TASKS.get(record.task).from_record(record)
