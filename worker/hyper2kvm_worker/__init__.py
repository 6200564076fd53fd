"""hyper2kvm worker: the data plane that inspects and converts VMware disks."""

__version__ = "0.1.0"
