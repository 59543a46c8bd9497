"""Who is who in the reference cloud: principals, what each may do on the bus, and policies.

Every service instance has its own principal, named after its service and
host: ``compute-<host>``, ``conductor-<host>``, ``scheduler-<host>``,
``billing-<host>``; the user command (services/cli.py) is ``admin``. A host
whose name cannot form a principal ([A-Za-z0-9_-], at most 64 characters in
all) is refused.

Two layers use these names:

- **the bus** (least privilege): :func:`access` says what each principal
  consumes, sends to, advertises and watches; ``rpclib.access.provision``
  makes the broker (or the memory bus) enforce it. A compute node's account
  reads only its own queues and writes only to the conductor.
- **the services** (authorization): each server and billing's listener is
  given one of the policies below, so it serves only the principals that
  need each method, and the conductor takes a compute node's host from the
  authenticated sender (:func:`compute_host`), never from the arguments.
"""

from __future__ import annotations

import logging

import rpclib
from rpclib.access import Access, check_principal
from services import notifications

LOG = logging.getLogger("services.identities")

COMPUTE, CONDUCTOR, SCHEDULER, BILLING = "compute", "conductor", "scheduler", "billing"
SERVICES = (COMPUTE, CONDUCTOR, SCHEDULER, BILLING)
ADMIN = "admin"
BILLING_POOL = "billing"

ROLES = {
    "compute": [f"{COMPUTE}-*"],
    "conductor": [f"{CONDUCTOR}-*"],
    "scheduler": [f"{SCHEDULER}-*"],
    "admin": [ADMIN],
}


class BadHost(ValueError):
    """A host name that cannot form a principal."""


def principal(service: str, host: str) -> str:
    """The principal of ``service`` on ``host`` (BadHost names the problem)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")
    name = f"{service}-{host}"
    try:
        if not host:
            raise ValueError("empty host")
        return check_principal(name)
    except ValueError:
        raise BadHost(
            f"host {host!r} cannot name the {service} principal {name!r}: use letters, "
            f"digits, '_' or '-', at most {64 - len(service) - 1} characters"
        ) from None


def compute_host(sender: str | None) -> str | None:
    """The host a compute node's principal names (None if ``sender`` is no compute node)."""
    prefix = f"{COMPUTE}-"
    if sender is None or not sender.startswith(prefix) or len(sender) == len(prefix):
        return None
    return sender[len(prefix) :]


# --- the bus: what each principal does -----------------------------------------------


def access(service: str, host: str) -> Access:
    """What ``service`` on ``host`` needs on the bus, and nothing more."""
    name = principal(service, host)
    serve = rpclib.Target(topic=_topic(service), server=host)
    if service == COMPUTE:
        return Access(name).serve(serve).call(rpclib.Target(topic=CONDUCTOR))
    if service == CONDUCTOR:
        # it asks the other conductors which database they use before it serves
        conductors = rpclib.Target(topic=CONDUCTOR)
        return Access(name).serve(serve).call(conductors).notify(notifications.TOPIC)
    if service == SCHEDULER:
        return (
            Access(name)
            .serve(serve)
            .call(rpclib.Target(topic=CONDUCTOR))
            .call(rpclib.Target(topic=COMPUTE))
        )
    return Access(name).serve(serve).listen(notifications.TOPIC, BILLING_POOL)


def admin_access() -> Access:
    """The user command: calls the scheduler, the conductor (reads) and billing (usage)."""
    return (
        Access(ADMIN)
        .call(rpclib.Target(topic=SCHEDULER))
        .call(rpclib.Target(topic=CONDUCTOR))
        .call(rpclib.Target(topic=BILLING))
    )


def _topic(service: str) -> str:
    return service  # each service serves the topic named after it


# --- the services: who may call what ------------------------------------------------

_EVERYONE = ("role:compute", "role:scheduler", "role:admin")
OBJECTS_NAMESPACE = rpclib.ObjectBackportEndpoint.target.namespace

CONDUCTOR_POLICY = rpclib.Policy(
    [
        rpclib.Allow(
            "role:compute",
            namespace="conductor",
            methods=["register_compute", "heartbeat", "instance_update", "release_allocation"],
            name="compute nodes report about themselves",
        ),
        rpclib.Allow(
            "role:conductor",
            namespace="conductor",
            methods=["database_id"],
            name="conductors compare their databases before sharing a bus",
        ),
        rpclib.Allow(
            "role:compute",
            namespace="conductor",
            methods=["get_instance_metadata"],
            name="a compute node's metadata service reads its own host's guests",
        ),
        rpclib.Allow(
            "role:scheduler",
            namespace="conductor",
            methods=[
                "create_instance",
                "allocation_candidates",
                "claim",
                "fail_unplaced",
                "get_instance",
                "begin_delete",
            ],
            name="schedulers create and place instances",
        ),
        rpclib.Allow(
            "role:admin",
            namespace="conductor",
            methods=[
                "get_instance",
                "list_instances",
                "list_services",
                "allocation_candidates",
                "forget_compute",
            ],
            name="the admin reads, and forgets retired compute hosts",
        ),
        rpclib.Allow(
            *_EVERYONE,
            namespace=OBJECTS_NAMESPACE,
            methods=["*"],
            name="object backports for every service",
        ),
    ],
    roles=ROLES,
)
"""The conductor's calls: each caller role gets only the methods it needs."""

SCHEDULER_POLICY = rpclib.Policy(
    [
        rpclib.Allow(
            "role:admin",
            namespace="scheduler",
            methods=["boot", "delete", "compute_status"],
            name="admin",
        )
    ],
    roles=ROLES,
)
"""Only the admin boots and deletes instances."""

COMPUTE_POLICY = rpclib.Policy(
    [
        rpclib.Allow(
            "role:scheduler",
            namespace="compute",
            methods=["build_instance", "delete_instance", "check_image"],
            name="schedulers send builds and deletes, and ask about images",
        )
    ],
    roles=ROLES,
)
"""Only schedulers send a compute node work."""

BILLING_POLICY = rpclib.Policy(
    [rpclib.Allow("role:admin", namespace="billing", methods=["usage"], name="admin reads usage")],
    roles=ROLES,
)
"""Only the admin reads usage."""

BILLING_LISTENER_POLICY = rpclib.Policy(
    [rpclib.Allow("role:conductor", events=["instance.*"], name="conductors emit instance events")],
    roles=ROLES,
)
"""Billing counts instance events from conductors only."""

POLICIES = {
    CONDUCTOR: CONDUCTOR_POLICY,
    SCHEDULER: SCHEDULER_POLICY,
    COMPUTE: COMPUTE_POLICY,
    BILLING: BILLING_POLICY,
}


def server_policy(service: str, authorization: bool) -> rpclib.Policy | None:
    """``service``'s server policy, or None (with a loud warning) when authorization is off."""
    if authorization:
        return POLICIES[service]
    LOG.warning(
        "AUTHORIZATION IS OFF for %s: any process on the bus may call any of its methods "
        "and claim any host; use this only on a bus that cannot authenticate senders",
        service,
    )
    return None
