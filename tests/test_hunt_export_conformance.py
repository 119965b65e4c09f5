"""The conformance check of a user's task type, given what a user may pass by mistake."""

from __future__ import annotations

import pytest

from lossforge.conformance import assert_task_conforms, check_rule, check_task
from lossforge.errors import ConfigError
from lossforge.tasks.registry import make_task


@pytest.mark.parametrize("task", [object, dict, 3, None, "regression".encode()])
@pytest.mark.parametrize("check", [check_task, lambda task: check_rule(task, None, "determinism"),
                                   assert_task_conforms])
def test_something_that_is_no_task_type_is_a_config_error(task, check) -> None:
    # Before: check_task(object) or check_task(None) raised AttributeError ('object' object has no attribute
    # 'problem'); the CLI's string path already refused a class that is not a Task
    with pytest.raises(ConfigError, match="Task"):
        check(task)


def test_settings_beside_a_built_task_are_refused_not_ignored() -> None:
    # Before: check_task(instance, {"steps": ...}) checked the instance and dropped the settings silently
    task = make_task("regression", steps=5, n_train=16, n_test=16, hidden=4)
    with pytest.raises(ConfigError, match="settings"):
        check_task(task, {"steps": 7})
    with pytest.raises(ConfigError, match="JSON object"):
        check_task("regression", [("steps", 5)])
