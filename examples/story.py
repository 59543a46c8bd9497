"""rpclib's own story, end to end in one process over ``memory://``.

Two compute servers on interface 1.2 with an old Flavor object; a client on
``version_cap="auto"`` downgrades its calls and backports its objects for
them; the servers are upgraded one at a time and the client follows without a
restart; a billing listener consumes the notification of every build.

Run it with ``scripts/story`` (it makes the virtualenv; or ``python -m examples.story``
with rpclib installed).
"""

from __future__ import annotations

import logging
import queue
import sys
from typing import Any

import rpclib
from rpclib.objects import Registry, VersionedObject, fields

# --- two generations of the same object, as two processes would see them -------------

OLD_OBJECTS, NEW_OBJECTS = Registry(), Registry()


@OLD_OBJECTS.register
class FlavorV1(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.0"
    fields = {"name": fields.String(), "vcpus": fields.Integer(), "memory_mb": fields.Integer()}


@NEW_OBJECTS.register
class FlavorV2(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.1"
    fields = {
        "name": fields.String(),
        "vcpus": fields.Integer(),
        "memory_mb": fields.Integer(),
        "gpus": fields.Integer(default=0, since="1.1"),
    }


# --- two generations of the compute interface --------------------------------------------

BUILD = rpclib.Method("build", since="1.0", args={"hostname": "1.3"})


class ComputeV12:
    target = rpclib.Target(version="1.2")

    def __init__(self, host: str, notifier: rpclib.Notifier) -> None:
        self.host, self.notifier = host, notifier

    def build(self, ctx: dict[str, Any], name: str, flavor: FlavorV1) -> str:
        self.notifier.info(ctx, "instance.create.end", {"name": name, "vcpus": flavor.vcpus})
        return f"{self.host} (v1.2) built {name}: {flavor!r}"


class ComputeV13(ComputeV12):
    target = rpclib.Target(version="1.3")

    def build(  # type: ignore[override]
        self, ctx: dict[str, Any], name: str, flavor: FlavorV2, hostname: str | None = None
    ) -> str:
        self.notifier.info(ctx, "instance.create.end", {"name": name, "vcpus": flavor.vcpus})
        return f"{self.host} (v1.3) built {name} as {hostname!r}: {flavor!r}"


class Billing:
    def __init__(self) -> None:
        self.events: queue.Queue[str] = queue.Queue()

    def info(
        self, ctx: dict[str, Any], publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self.events.put(
            f"{event_type} from {publisher_id}: {payload} (id {metadata['message_id']})"
        )


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    logging.basicConfig(level=logging.ERROR, format="   [log] %(name)s: %(message)s")
    transport = rpclib.get_transport("memory://story")
    billing = Billing()
    listener = rpclib.NotificationListener(
        transport, [rpclib.Target(topic="notifications")], [billing], pool="billing"
    )
    listener.start()
    servers: dict[str, rpclib.RPCServer] = {}

    def start(host: str, generation: type[ComputeV12], objects: Registry) -> None:
        notifier = rpclib.Notifier(transport, publisher_id=f"compute.{host}")
        server = rpclib.RPCServer(
            transport,
            rpclib.Target(topic="compute", server=host),
            [generation(host, notifier)],
            serializer=rpclib.Serializer(objects),
            advert_interval=0.5,
        )
        server.start()
        servers[host] = server

    def replace(host: str) -> None:
        servers[host].stop()
        servers[host].wait()
        start(host, ComputeV13, NEW_OBJECTS)

    client = rpclib.RPCClient(
        transport,
        rpclib.Target(topic="compute"),
        version_cap="auto",
        timeout=10,
        serializer=rpclib.Serializer(NEW_OBJECTS),
    )
    flavor = FlavorV2(name="m1.small", vcpus=2, memory_mb=2048, gpus=1)

    say("== 1. two compute nodes on interface 1.2, with Flavor 1.0")
    start("host1", ComputeV12, OLD_OBJECTS)
    start("host2", ComputeV12, OLD_OBJECTS)
    say(f"   client cap (auto): {client.version_cap}")
    for n in (1, 2):
        say("   " + client.call({}, BUILD, name=f"vm{n}", flavor=flavor, hostname=f"vm{n}.example"))
    say("   -> sent at 1.2 without 'hostname'; Flavor backported to 1.0 without 'gpus'")

    say("== 2. upgrade host1 to 1.3: the cluster still has a 1.2 node")
    replace("host1")
    say(f"   client cap (auto): {client.version_cap}")
    host1 = client.prepare(server="host1")
    say(f"   cap for host1 alone: {host1.version_cap}")
    say("   " + host1.call({}, BUILD, name="vm3", flavor=flavor, hostname="vm3.example"))
    try:
        client.prepare(version="1.3").cast({}, "build", name="vm", flavor=flavor)
    except rpclib.VersionCapError as exc:
        say(f"   a 1.3 cast to the topic is refused before sending: {exc}")

    say("== 3. upgrade host2: every live node speaks 1.3")
    replace("host2")
    say(f"   client cap (auto): {client.version_cap}")
    say("   " + client.call({}, BUILD, name="vm4", flavor=flavor, hostname="vm4.example"))

    say("== 4. an old request to a new server is honoured; a newer one is rejected at once")
    old_client = client.prepare(version_cap="1.1", version="1.1")
    say("   " + old_client.call({}, "build", name="vm5", flavor=flavor))
    try:
        client.prepare(version="1.4", version_cap="1.4").call({}, "build", name="x", flavor=flavor)
    except rpclib.UnsupportedVersion as exc:
        say(f"   {type(exc).__name__}: {exc}")

    say("== 5. billing consumed every build notification")
    for _ in range(5):
        say("   " + billing.events.get(timeout=10))

    for server in servers.values():
        server.stop()
        server.wait()
    listener.stop()
    listener.wait()
    transport.close()
    say("done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
