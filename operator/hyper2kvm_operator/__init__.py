"""hyper2kvm operator: the control plane that runs MigrationJobs as worker Pods."""
