"""The conductor process: migrates its database, serves, audits usage."""

from __future__ import annotations

import datetime as dt
import queue
from pathlib import Path
from typing import Any

import rpclib
from services import notifications
from services.conductor.rpcapi import ConductorAPI
from services.conductor.service import ConductorService
from services.objects import Flavor

CTX: dict[str, Any] = {}


def test_audit_emits_exists_for_running_instances(
    tmp_path: Path, transport: rpclib.Transport
) -> None:
    seen: queue.Queue[dict[str, Any]] = queue.Queue()

    class Audit:
        def info(
            self, ctx: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
        ) -> None:
            if event_type == notifications.EXISTS:
                seen.put(payload)

    listener = rpclib.NotificationListener(
        transport, [rpclib.Target(topic="notifications")], [Audit()], pool="audit"
    )
    listener.start()
    # A bus without accounts: authorization off (who may call is tested in tests/security).
    service = ConductorService(
        transport, host="c1", state_dir=tmp_path, audit_interval=3600, authorization=False
    )
    service.start()
    try:
        api = ConductorAPI(transport, timeout=10)
        api.register_compute(CTX, "h1", 4, 4096, 40, {"compute": "1.1"})
        vm = api.create_instance(
            CTX, "vm", "p1", "u1", Flavor(vcpus=1, memory_mb=64, disk_gb=1), "img"
        )
        api.claim(CTX, str(vm.uuid), "h1", {"VCPU": 1, "MEMORY_MB": 64, "DISK_GB": 1})
        launched = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        assert api.client.call(
            CTX,
            "instance_update",
            instance_uuid=str(vm.uuid),
            host="h1",
            sequence=1,
            state={"vm_state": "ACTIVE", "launched_at": launched},
        )
        assert service.audit() == 1
        payload = seen.get(timeout=10)
        assert payload["instance_uuid"] == str(vm.uuid)
        assert payload["audit_period_end"] > payload["audit_period_start"]
    finally:
        service.stop()
        listener.stop()
        listener.wait(10)


def test_the_database_file_is_created_in_the_state_dir(
    tmp_path: Path, transport: rpclib.Transport
) -> None:
    service = ConductorService(transport, host="c1", state_dir=tmp_path)
    service.start()
    service.stop()
    assert (tmp_path / "conductor.sqlite").exists()
