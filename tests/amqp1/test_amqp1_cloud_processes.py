"""The reference services over ``amqp1://``, each service in its own process, on both
broker generations (RabbitMQ 3.10's plugin, RabbitMQ 4 native).

The same flow as over RabbitMQ's 0-9-1 driver: two computes register, two
instances boot on different hosts through scheduler and conductor, one is
deleted, and billing sees both. Each service logs in with its own least-privilege
account, provisioned through the management API of a private node per generation
(shared with test_security.py), and the services check their senders.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cloud import boot_delete_and_bill, running_cloud


def test_instances_boot_across_processes_and_are_billed(
    tmp_path: Path, fresh_amqp1_admin_url: str
) -> None:
    """Each service its own process with its own least-privilege account, checking senders."""
    with running_cloud(fresh_amqp1_admin_url, tmp_path, authorization=True) as (cloud, image):
        boot_delete_and_bill(cloud, image)
