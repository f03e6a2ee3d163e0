"""Tree ordering and validation: one implementation for both kinds."""
from __future__ import annotations

import random

from snapstore import codes, kinds, model


def moment(name: str, parent: str | None = None, created: int | None = 0, uuid: str = "u1") -> model.Moment:
    return model.Moment(name, parent, created, body=b"<domainsnapshot/>", uuids=(uuid,))


def names(moments: list[model.Moment]) -> list[str]:
    return [m.name for m in moments]


def problem_codes(tree: model.Tree) -> list[str]:
    return [p.code for p in tree.validate()]


def test_topological_puts_parents_first_and_orders_siblings_by_time_then_name() -> None:
    tree = model.Tree(kinds.SNAPSHOT, "vm", [
        moment("c", "a", 5), moment("b", "a", 5), moment("a", None, 1), moment("d", "a", 2),
        moment("e", "b", 9), moment("z", None, 0),
    ])
    assert names(tree.topological()) == ["z", "a", "d", "b", "e", "c"]


def test_topological_is_independent_of_input_order() -> None:
    specs = [("r", None, 1)] + [(f"n{i}", f"n{i // 2}" if i > 1 else "r", i) for i in range(1, 200)]
    expected = None
    for seed in range(5):
        shuffled = specs[:]
        random.Random(seed).shuffle(shuffled)
        order = names(model.Tree(kinds.SNAPSHOT, "vm", [moment(*s) for s in shuffled]).topological())
        expected = expected or order
        assert order == expected
    assert expected.index("n3") > expected.index("n1")


def test_deep_chain_has_no_recursion_limit() -> None:
    chain = [moment("s0")] + [moment(f"s{i}", f"s{i - 1}", i) for i in range(1, 5000)]
    tree = model.Tree(kinds.SNAPSHOT, "vm", reversed(chain), current="s4999")
    assert tree.validate() == []
    assert names(tree.topological())[-1] == "s4999"


def test_valid_tree_has_no_problems() -> None:
    tree = model.Tree(kinds.SNAPSHOT, "vm", [moment("a"), moment("b", "a")], current="b")
    assert tree.validate() == []


def test_each_rule_has_its_code_and_names_the_moment() -> None:
    cases = {
        codes.EMPTY_NAME: ([moment("")], None),
        codes.DUPLICATE: ([moment("a"), moment("a")], None),
        codes.MISSING_PARENT: ([moment("a", "ghost")], None),
        codes.CYCLE: ([moment("r"), moment("a", "b"), moment("b", "a")], None),
        codes.CURRENT_MISSING: ([moment("a")], "nope"),
        codes.UUID_MISMATCH: ([moment("a"), moment("b", "a", uuid="u2")], None),
    }
    for code, (moments, current) in cases.items():
        tree = model.Tree(kinds.SNAPSHOT, "vm", moments, current)
        assert problem_codes(tree) == [code] if code != codes.CYCLE else problem_codes(tree) == [code, code]


def test_problem_messages_name_the_snapshot_and_rule() -> None:
    [problem] = model.Tree(kinds.SNAPSHOT, "vm", [moment("child", "ghost")]).validate()
    assert "'child'" in str(problem) and "'ghost'" in str(problem) and "SS203" in str(problem)


def test_expected_uuid_is_enforced() -> None:
    tree = model.Tree(kinds.SNAPSHOT, "vm", [moment("a", uuid="u1")])
    assert problem_codes(tree) == []
    assert [p.code for p in tree.validate(expected_uuid="other")] == [codes.UUID_MISMATCH]


def test_checkpoint_current_is_the_leaf_of_a_linear_chain() -> None:
    chain = [moment("a"), moment("b", "a", 1), moment("c", "b", 2)]
    assert model.Tree(kinds.CHECKPOINT, "vm", chain, current="a").current == "c"
    forked = chain + [moment("d", "a", 3)]
    assert model.Tree(kinds.CHECKPOINT, "vm", forked).current is None
    assert model.Tree(kinds.CHECKPOINT, "vm", []).current is None
    two_roots = [moment("a"), moment("b")]
    assert model.Tree(kinds.CHECKPOINT, "vm", two_roots).current is None


def test_checkpoint_names_follow_libvirts_schema_pattern() -> None:
    good = model.Tree(kinds.CHECKPOINT, "vm", [moment("c-1_a.b"), moment("9", "c-1_a.b")])
    assert good.validate() == []
    for bad in [".hidden", "with space", "a/b", "é", "line\nbreak"]:
        tree = model.Tree(kinds.CHECKPOINT, "vm", [moment(bad)])
        assert [p.code for p in tree.validate()] == [codes.NAME_PATTERN], bad
    assert model.Tree(kinds.SNAPSHOT, "vm", [moment("with space")]).validate() == []


def test_an_order_is_reused_only_for_the_same_shape() -> None:
    """Trees of one shape (names, parents, creation times) share the walk's
    order; a moved parent or a new creation time is a new shape, walked anew."""
    def tree(parents: dict[str, str | None], times: dict[str, int]) -> model.Tree:
        return model.Tree(kinds.SNAPSHOT, "vm1", [moment(n, p, times[n]) for n, p in parents.items()], None)

    chain = {"a": None, "b": "a", "c": "b", "d": "a"}
    times = {"a": 1, "b": 2, "c": 3, "d": 4}
    first = tree(chain, times)
    assert [m.name for m in first.topological()] == ["a", "b", "c", "d"]
    again = tree(chain, times)  # other Moment objects, the same shape
    assert [m.name for m in again.topological()] == ["a", "b", "c", "d"]
    assert again.topological()[2] is again.by_name["c"], "the order is of this tree's own moments"
    moved = tree({**chain, "c": "d"}, times)
    assert [m.name for m in moved.topological()] == ["a", "b", "d", "c"]
    retimed = tree(chain, {**times, "d": 0})
    assert [m.name for m in retimed.topological()] == ["a", "d", "b", "c"]
