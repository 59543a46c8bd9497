"""The compute node's hypervisor, through libvirt (the only module importing ``libvirt``).

``test:///default`` is libvirt's built-in test hypervisor: no daemon, state in
this process (every connection to it in the process shares the same domains;
it starts with one domain named ``test``). It defines and "runs" domains without
running anything, and invents an IPv4 address from the network's DHCP range for
every running domain's NIC (``interfaceAddresses`` ignores the source asked
for). ``qemu:///system`` boots real VMs; domains are ``type='qemu'`` (TCG
software emulation) unless ``virt_type='kvm'`` is asked for.

Every domain is named ``instance-<uuid>`` and has the instance's uuid, so a
user's instance name (kept as the domain's title) can never collide.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import libvirt

LOG = logging.getLogger("services.compute")

GiB = 1024**3
T = TypeVar("T")
_VIRT_TYPES = {"test": "test", "qemu": "qemu"}
_IP_POLL_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class HostResources:
    """What this node offers: the inventories it registers with placement."""

    vcpus: int
    memory_mb: int
    disk_gb: int


class VirtError(Exception):
    """A hypervisor operation failed; names the operation and the instance."""

    def __init__(self, operation: str, instance_uuid: str | None, reason: str) -> None:
        self.operation = operation
        self.instance_uuid = instance_uuid
        self.reason = reason
        subject = f" of instance {instance_uuid}" if instance_uuid else ""
        super().__init__(f"libvirt {operation}{subject} failed: {reason}")


def _ignore_libvirt_error(_ctx: object, _error: object) -> None:
    """Silence libvirt's default handler (it prints every error to stderr); we raise instead."""


_TEST_NODE = """<node>
  <cpu>
    <nodes>2</nodes><sockets>2</sockets><cores>2</cores><threads>2</threads>
    <active>16</active><mhz>1400</mhz><model>i686</model>
  </cpu>
  <memory>3145728</memory>
  <network>
    <name>default</name>
    <bridge name="virbr{index}"/>
    <forward mode="nat"/>
    <ip address="192.168.{subnet}.1" netmask="255.255.255.0">
      <dhcp><range start="192.168.{subnet}.2" end="192.168.{subnet}.254"/></dhcp>
    </ip>
  </network>
</node>
"""


def simulated_node_uri(directory: Path, index: int) -> str:
    """A ``test://`` URI for a simulated node like ``test:///default`` whose network is
    192.168.(122 + ``index``).0/24.

    The test driver invents each domain's address from its network's range, the
    same sequence in every process: compute nodes running as separate processes
    on ``test:///default`` would report the same addresses. Give each its own
    ``index`` and their addresses differ.
    """
    if not 0 <= index <= 132:
        raise ValueError(f"simulated node index must be 0..132, got {index}")
    path = Path(directory).absolute() / f"test-node-{index}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_TEST_NODE.format(index=index, subnet=122 + index))
    return f"test://{path}"


def domain_name(instance_uuid: str) -> str:
    return f"instance-{instance_uuid}"


class LibvirtDriver:
    """Defines, starts, finds and destroys the VMs of one compute node.

    One libvirt connection, opened lazily and reopened if it dies, is shared by
    all threads (libvirt connections are thread-safe). ``instances_dir`` holds
    the instances' disks and console logs; its file system's size is the node's
    disk inventory.
    """

    def __init__(
        self,
        uri: str = "test:///default",
        *,
        instances_dir: Path | str,
        virt_type: str | None = None,
    ) -> None:
        scheme = urlsplit(uri).scheme.split("+", 1)[0]
        if virt_type is None:
            if scheme not in _VIRT_TYPES:
                raise ValueError(f"no default domain type for libvirt URI {uri!r}; pass virt_type")
            virt_type = _VIRT_TYPES[scheme]
        self.uri = uri
        self.virt_type = virt_type
        self.simulated = scheme == "test"
        self.instances_dir = Path(instances_dir).absolute()
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # -- connection ------------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None and self._conn.isAlive() == 1:
                return self._conn
            if self._conn is not None:
                LOG.warning("libvirt connection to %s lost; reconnecting", self.uri)
                self._close_quietly(self._conn)
            libvirt.registerErrorHandler(_ignore_libvirt_error, None)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                self._conn = None
                raise VirtError("connect", None, f"{self.uri}: {exc}") from exc
            return self._conn

    @staticmethod
    def _close_quietly(conn: libvirt.virConnect) -> None:
        with suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None:
                self._close_quietly(self._conn)
                self._conn = None

    def _run(
        self, operation: str, instance_uuid: str | None, work: Callable[[libvirt.virConnect], T]
    ) -> T:
        """``work(connection)``, its libvirt errors as VirtError.

        If the connection broke under it (libvirtd restarted), it is reopened
        and ``work`` runs once more: every operation here is safe to repeat.
        """
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return work(conn)
            except libvirt.libvirtError as exc:
                if attempt == 1 and conn.isAlive() != 1:
                    LOG.warning("libvirt connection broke during %s (%s); retrying", operation, exc)
                    continue
                raise VirtError(operation, instance_uuid, str(exc)) from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _lookup(conn: libvirt.virConnect, instance_uuid: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByUUIDString(instance_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # -- host ------------------------------------------------------------------------------

    def host_resources(self) -> HostResources:
        """vCPUs and memory from libvirt's node info; disk: the size of ``instances_dir``'s FS."""
        _model, memory_mb, cpus, *_ = self._run("host_resources", None, lambda c: c.getInfo())
        disk = shutil.disk_usage(self.instances_dir)
        return HostResources(vcpus=int(cpus), memory_mb=int(memory_mb), disk_gb=disk.total // GiB)

    def disk_path(self, instance_uuid: str) -> Path:
        """Where the instance's root disk lives."""
        return self.instances_dir / f"{instance_uuid}.qcow2"

    def console_log(self, instance_uuid: str) -> Path:
        """The instance's serial console output (real hypervisors only)."""
        return self.instances_dir / f"{instance_uuid}.console.log"

    # -- domains ---------------------------------------------------------------------------

    def exists(self, instance_uuid: str) -> bool:
        """Whether a domain (running or not) is defined for the instance."""
        return (
            self._run("lookup", instance_uuid, lambda c: self._lookup(c, instance_uuid)) is not None
        )

    def is_running(self, instance_uuid: str) -> bool:
        def running(conn: libvirt.virConnect) -> bool:
            domain = self._lookup(conn, instance_uuid)
            return domain is not None and domain.isActive() == 1

        return self._run("lookup", instance_uuid, running)

    def spawn(
        self,
        instance_uuid: str,
        name: str,
        vcpus: int,
        memory_mb: int,
        disk_path: Path,
        *,
        network: str = "default",
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
    ) -> None:
        """Define the instance's domain and start it.

        A domain that fails to start is undefined again, so a failed spawn
        leaves nothing behind.
        """
        xml = self.domain_xml(
            instance_uuid,
            name,
            vcpus,
            memory_mb,
            disk_path,
            network=network,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
        )
        domain = self._run("define", instance_uuid, lambda c: c.defineXML(xml))
        try:
            self._run(
                "start", instance_uuid, lambda c: c.lookupByUUIDString(instance_uuid).create()
            )
        except VirtError:
            self._undefine_quietly(domain, instance_uuid)
            raise
        LOG.info("started domain %s (%s) on %s", domain_name(instance_uuid), name, self.uri)

    def _undefine_quietly(self, domain: libvirt.virDomain, instance_uuid: str) -> None:
        try:
            domain.undefine()
        except libvirt.libvirtError as exc:
            LOG.warning("could not undefine domain of instance %s: %s", instance_uuid, exc)

    def domain_xml(
        self,
        instance_uuid: str,
        name: str,
        vcpus: int,
        memory_mb: int,
        disk_path: Path,
        *,
        network: str = "default",
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str | None = None,
    ) -> str:
        """The libvirt domain definition ``spawn`` uses."""
        domain = ET.Element("domain", type=self.virt_type)
        ET.SubElement(domain, "name").text = domain_name(instance_uuid)
        ET.SubElement(domain, "uuid").text = instance_uuid
        ET.SubElement(domain, "title").text = " ".join(name.split())
        ET.SubElement(domain, "memory", unit="MiB").text = str(memory_mb)
        ET.SubElement(domain, "vcpu").text = str(vcpus)
        os_ = ET.SubElement(domain, "os")
        ET.SubElement(os_, "type").text = "hvm"
        if kernel is not None:
            ET.SubElement(os_, "kernel").text = str(Path(kernel).absolute())
            if initrd is not None:
                ET.SubElement(os_, "initrd").text = str(Path(initrd).absolute())
            if cmdline is not None:
                ET.SubElement(os_, "cmdline").text = cmdline
        else:
            ET.SubElement(os_, "boot", dev="hd")
        features = ET.SubElement(domain, "features")
        ET.SubElement(features, "acpi")
        for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart")):
            ET.SubElement(domain, event).text = action
        ET.SubElement(domain, "on_crash").text = "destroy"
        devices = ET.SubElement(domain, "devices")
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=str(Path(disk_path).absolute()))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "source", network=network)
        ET.SubElement(nic, "model", type="virtio")
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "log", file=str(self.console_log(instance_uuid)), append="off")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
        return ET.tostring(domain, encoding="unicode")

    def wait_for_ip(self, instance_uuid: str, timeout: float) -> str | None:
        """The instance's IPv4 address from its DHCP lease, or None after ``timeout`` seconds.

        Raises VirtError if the domain is gone or stops running meanwhile. On
        ``test://`` the address is the test driver's invention and comes at once.
        """

        def leased(conn: libvirt.virConnect) -> str | None:
            domain = self._lookup(conn, instance_uuid)
            if domain is None or domain.isActive() != 1:
                raise VirtError("wait_for_ip", instance_uuid, "domain is not running")
            return self._leased_ipv4(conn, domain)

        deadline = time.monotonic() + timeout
        while True:
            address = self._run("wait_for_ip", instance_uuid, leased)
            if address is not None:
                return address
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(_IP_POLL_INTERVAL, remaining))

    def _leased_ipv4(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> str | None:
        try:
            interfaces = domain.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            return self._network_leased_ipv4(conn, domain)
        for interface in (interfaces or {}).values():
            for addr in interface.get("addrs") or ():
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and addr.get("addr"):
                    return str(addr["addr"])
        return None

    @staticmethod
    def _network_leased_ipv4(conn: libvirt.virConnect, domain: libvirt.virDomain) -> str | None:
        """Fallback: the networks' DHCP leases, matched by the domain's MACs."""
        root = ET.fromstring(domain.XMLDesc())
        for nic in root.iterfind("./devices/interface[@type='network']"):
            mac = nic.find("mac")
            source = nic.find("source")
            if mac is None or source is None:
                continue
            net = conn.networkLookupByName(source.get("network", ""))
            for lease in net.DHCPLeases(mac.get("address")) or ():
                if lease.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and lease.get("ipaddr"):
                    return str(lease["ipaddr"])
        return None

    def destroy(self, instance_uuid: str) -> None:
        """Stop the domain if it runs and undefine it; nothing to do if it is already gone."""

        def destroy(conn: libvirt.virConnect) -> None:
            domain = self._lookup(conn, instance_uuid)
            if domain is not None:
                self._stop_and_undefine(domain)

        self._run("destroy", instance_uuid, destroy)
        self.console_log(instance_uuid).unlink(missing_ok=True)
        LOG.info("destroyed domain %s", domain_name(instance_uuid))

    @staticmethod
    def _stop_and_undefine(domain: libvirt.virDomain) -> None:
        # Each step tolerates the domain having stopped or vanished meanwhile (a concurrent
        # or redelivered delete): the end state is the same.
        gone = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
        try:
            if domain.isActive() == 1:
                domain.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in gone:
                raise
        try:
            if domain.isPersistent() == 1:
                domain.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in gone:
                raise
