"""Start Azurite (the Azure Storage emulator, installed from npm into node_modules) for tests and the demo.

Azurite serves HTTPS with the emulator's certificate, so the storage SDKs run over TLS exactly as in Azure.
Its queue and table endpoints use the documented development account.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sim.certs import server_certificate

ROOT = Path(__file__).resolve().parent.parent
# The documented, public development-storage account of the Azure Storage emulators.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def azurite_binary() -> Path:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return local
    found = shutil.which("azurite")
    if found is None:
        raise FileNotFoundError("azurite is not installed: run `npm install` at the repository root")
    return Path(found)


class Azurite:
    """An Azurite process with in-memory storage on ephemeral loopback ports."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.ca_cert = str(self._dir / "cert.pem")
        self.queue_port = free_port()
        self.table_port = free_port()
        self.blob_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        base = "https://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=https;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{DEV_ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{DEV_ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{DEV_ACCOUNT};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        cert, key = server_certificate()
        Path(self.ca_cert).write_bytes(cert)
        (self._dir / "key.pem").write_bytes(key)
        command = [
            str(azurite_binary()),
            "--silent",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(self.table_port),
            "--cert",
            self.ca_cert,
            "--key",
            str(self._dir / "key.pem"),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self._dir)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for port in (self.queue_port, self.table_port):
            while True:
                if self._process is not None and self._process.poll() is not None:
                    stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                    raise RuntimeError(f"azurite exited at start: {stderr[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise TimeoutError(f"azurite did not listen on port {port} within {timeout} s") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
