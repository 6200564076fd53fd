"""vSphere (vCenter or ESXi) through pyVmomi: connect, find a VM, read its hardware and disks,
refuse what cannot be migrated, clone sessions for workers, stop the VM.

Plain synchronous functions, each call with a timeout: the operator runs them in a thread.
Modules: `client` (connection, retries), `tls` (certificate trust), `properties`
(PropertyCollector reads), `inventory` (find and read a VM), `facts`, `mapping` and
`refusals` (pure), `sessions` (worker sessions), `power` (stopping the VM), `errors`.
"""
