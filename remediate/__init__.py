"""rdp-remediate: find and repair Azure Windows VMs whose Remote Desktop fails with error 0x904."""

__version__ = "0.1.0"
