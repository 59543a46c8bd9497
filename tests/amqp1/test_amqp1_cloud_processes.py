"""The reference services over ``amqp1://``, each service in its own process, on both
broker generations (RabbitMQ 3.10's plugin, RabbitMQ 4 native).

The same flow as over RabbitMQ's 0-9-1 driver: two computes register, two
instances boot on different hosts through scheduler and conductor, one is
deleted, and billing sees both.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cloud import boot_delete_and_bill, running_cloud


def test_instances_boot_across_processes_and_are_billed(
    tmp_path: Path, any_fresh_amqp1_url: str
) -> None:
    with running_cloud(any_fresh_amqp1_url, tmp_path) as (cloud, image):
        boot_delete_and_bill(cloud, image)
