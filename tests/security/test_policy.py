"""The authorization policy: what it allows, what it denies, and why it says so."""

from __future__ import annotations

import pytest

from rpclib.exceptions import Forbidden
from rpclib.failures import DEFAULT_ALLOWED_MODULES, from_failure, to_failure
from rpclib.policy import DEFAULT_DENY, Allow, Policy

ROLES = {"compute": ["compute-*"], "admin": ["cli", "operator-?"]}


def cloud_policy() -> Policy:
    return Policy(
        [
            Allow("role:compute", namespace="conductor", methods=["register_compute", "heartbeat"]),
            Allow("scheduler", namespace="conductor", methods=["*"], name="scheduler owns it"),
            Allow("role:admin", namespace=None, methods=["list_*"]),
            Allow("conductor", events=["instance.*"]),
        ],
        roles=ROLES,
    )


def test_a_role_member_may_call_the_methods_its_role_is_allowed() -> None:
    decision = cloud_policy().check_call("compute-7", "conductor", "heartbeat")
    assert decision.allowed
    assert "role:compute" in decision.rule


def test_a_role_member_may_not_call_other_methods_of_the_namespace() -> None:
    decision = cloud_policy().check_call("compute-7", "conductor", "list_instances")
    assert not decision.allowed
    assert decision.rule == DEFAULT_DENY


def test_a_rule_names_one_namespace_only() -> None:
    assert not cloud_policy().check_call("compute-7", "scheduler", "heartbeat").allowed


def test_namespace_none_is_the_default_namespace_not_any() -> None:
    policy = cloud_policy()
    assert policy.check_call("operator-1", None, "list_instances").allowed
    assert not policy.check_call("operator-1", "conductor", "list_instances").allowed


def test_method_globs_and_rule_names_are_reported() -> None:
    decision = cloud_policy().check_call("scheduler", "conductor", "claim")
    assert decision == decision.__class__(True, "scheduler owns it")


def test_principal_globs_match_whole_names_only() -> None:
    policy = cloud_policy()
    assert not policy.check_call("compute", "conductor", "heartbeat").allowed
    assert not policy.check_call("evil-compute-1", "conductor", "heartbeat").allowed
    assert not policy.check_call("operator-12", None, "list_instances").allowed


def test_an_unauthenticated_sender_is_denied_whatever_the_rules() -> None:
    policy = Policy([Allow("*", namespace="*", methods=["*"])])
    decision = policy.check_call(None, "conductor", "heartbeat")
    assert not decision.allowed
    assert "unauthenticated" in decision.rule
    assert policy.check_call("anyone", "conductor", "heartbeat").allowed


def test_notification_rules_govern_event_types_not_methods() -> None:
    policy = cloud_policy()
    assert policy.check_notification("conductor", "instance.create.end").allowed
    assert not policy.check_notification("compute-1", "instance.create.end").allowed
    assert not policy.check_notification("scheduler", "instance.create.end").allowed
    assert not policy.check_call("conductor", "conductor", "instance.create.end").allowed


def test_a_policy_without_rules_denies_everything() -> None:
    assert not Policy([]).check_call("conductor", "conductor", "heartbeat").allowed


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: Allow(namespace="x", methods=["a"]), "at least one principal"),
        (lambda: Allow("a", namespace="x"), "exactly one of them"),
        (lambda: Allow("a", methods=["m"], events=["e"]), "exactly one of them"),
        (lambda: Allow("a", methods="heartbeat"), "not the string"),
        (lambda: Allow("a b", methods=["m"]), "bad principal pattern"),
        (lambda: Policy([Allow("role:nobody", methods=["m"])]), "unknown role 'role:nobody'"),
        (lambda: Policy(["compute may call"]), "must be Allow"),  # type: ignore[list-item]
    ],
)
def test_bad_rules_are_refused_with_the_problem_named(make, problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=problem):
        make()


def test_forbidden_names_principal_method_and_rule_and_survives_the_wire() -> None:
    exc = Forbidden("compute-7", "list_instances", "conductor", DEFAULT_DENY)
    assert "'compute-7' may not call conductor.list_instances" in str(exc)
    assert DEFAULT_DENY in str(exc)
    assert isinstance(exc, PermissionError)
    rebuilt = from_failure(to_failure(exc), DEFAULT_ALLOWED_MODULES)
    assert isinstance(rebuilt, Forbidden)
    assert (rebuilt.principal, rebuilt.method, rebuilt.namespace, rebuilt.rule) == (
        "compute-7", "list_instances", "conductor", DEFAULT_DENY,
    )  # fmt: skip
