"""The compute service: boots this node's VMs through libvirt and reports their state.

- ``virt``: ``LibvirtDriver`` (the only module importing libvirt), ``HostResources``, ``VirtError``.
- ``images``: ``ImageCache`` (base images, qcow2 instance disks), ``ImageError``.
- ``manager``: ``ComputeManager``, the ``compute`` RPC endpoint, and the
  ``ConductorClient`` protocol it reports through.
"""
