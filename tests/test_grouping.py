"""The test-run groups (tests/conftest.py) are what pytest-xdist's loadgroup scheduler reads back from node ids."""

from types import SimpleNamespace

import pytest
from conftest import _SHARED_RUNS, _group
from xdist.scheduler.loadgroup import LoadGroupScheduling


def item(nodeid, fixtures, params=None, param_id=""):
    callspec = SimpleNamespace(params=params, id=param_id) if params else None
    return SimpleNamespace(nodeid=nodeid, fixturenames=fixtures, callspec=callspec)


@pytest.mark.parametrize("shared", _SHARED_RUNS)
def test_a_parametrized_shared_run_is_one_group_xdist_can_read(shared):
    tests = [item(f"tests/{module}::test_x[a-b]", ["tmp_path", shared], params={shared: ("a", "b")}, param_id="a-b")
             for module in ("test_one.py", "test_two.py")]
    groups = {_group(t) for t in tests}
    assert len(groups) == 1
    (group,) = groups
    # xdist appends "@group" to the node id and splits it back off; a group it cannot split is a group per test.
    assert LoadGroupScheduling._split_scope(None, f"{tests[0].nodeid}@{group}") == group
    other = item("tests/test_one.py::test_x[c-d]", [shared], params={shared: ("c", "d")}, param_id="c-d")
    assert _group(other) != group


def test_other_tests_go_with_their_module():
    tests = [item("tests/test_one.py::test_a[1]", ["tmp_path"], params={"n": 1}, param_id="1"),
             item("tests/test_one.py::test_b", [])]
    assert {_group(t) for t in tests} == {"tests/test_one.py"}
    assert LoadGroupScheduling._split_scope(None, "tests/test_one.py::test_a[1]@tests/test_one.py") == "tests/test_one.py"
