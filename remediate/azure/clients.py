"""The one place that builds the Azure credential and the service clients, once per process, lazily.

Importing this module costs nothing: every Azure SDK import happens inside the function that first needs it,
because a Function's cold start pays for each one (about 1.4 s for all of them).

Real mode: `DefaultAzureCredential` (the managed identity in the Function) against `RDPR_ARM_URL` /
`RDPR_LOGS_URL`. Emulator mode (`RDPR_EMULATOR=true`): a static token and the emulator's CA certificate, and
only loopback endpoints are accepted. In both modes every client carries a pipeline policy that refuses, before
authentication, any request to a host other than the configured ARM and Log Analytics endpoints (scheme, host
and port), so the token never follows a polling header, a `nextLink` or a stored continuation token elsewhere.

Every client retries with azure-core's policy, except that a `Retry-After` longer than
`RDPR_RETRY_AFTER_CAP_SECONDS` is cut to the cap: a worker must never sleep past its own deadline because the
service asked it to wait an hour.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from remediate.azure.urltrust import HostKey, host_key, looks_like_url
from remediate.model import ConfigurationError, UntrustedHost
from remediate.settings import Settings, get_settings, is_loopback_host

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential, TokenRequestOptions
    from azure.core.pipeline import PipelineRequest
    from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.monitor import MonitorManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.resourcegraph import ResourceGraphClient
    from azure.monitor.query import LogsQueryClient

log = logging.getLogger(__name__)

PUBLIC_LOGS_URL = "https://api.loganalytics.io/v1"
LOGS_AUDIENCE = "https://api.loganalytics.io"
# The identity the emulator's token names: a user signed in with the Azure CLI, as a v1.0 access token for
# Resource Manager carries it (Microsoft Learn, "Access token claims reference": aud, iss, iat, nbf, exp, appid,
# appidacr, idtyp, name, oid, scp, sub, tid, unique_name, upn, ver). 04b07795-... is the Azure CLI's application id
# (Microsoft Learn, "Verify first-party Microsoft applications in sign-in reports"). The tenant is the emulator's.
EMULATOR_TENANT = "00000000-0000-4000-8000-0000000000aa"
EMULATOR_CLAIMS: dict[str, Any] = {
    "aud": "https://management.azure.com/",
    "iss": f"https://sts.windows.net/{EMULATOR_TENANT}/",
    "acr": "1",
    "amr": ["pwd", "mfa"],
    "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
    "appidacr": "0",
    "idtyp": "user",
    "name": "Emulator Operator",
    "oid": "6f0c2a9e-3d1b-4c57-9e8a-2b4d7f1a0c53",
    "scp": "user_impersonation",
    "sub": "u7Qm2kVYl0cX9sWQm3o5n2bT8aZr4eH1jK6pL0dF2gE",
    "tid": EMULATOR_TENANT,
    "unique_name": "operator@contoso.example",
    "upn": "operator@contoso.example",
    "ver": "1.0",
}


_T = TypeVar("_T")


def _require_loopback(name: str, url: str) -> None:
    key = host_key(url)
    if key is None or not is_loopback_host(key[1].strip("[]")):
        raise ConfigurationError(
            f"emulator mode refuses {name}={url!r}: the static emulator token is only sent to loopback addresses"
        )


class StaticTokenCredential:
    """The emulator's credential: a JWT-shaped access token naming `claims` (an operator signed in with the Azure
    CLI unless told otherwise), for every scope, re-issued when it nears its `exp`. Its signature is not a real
    one: the emulator accepts any bearer token, and nothing in the product trusts a token's signature."""

    def __init__(
        self, claims: Mapping[str, Any] | None = None, lifetime_seconds: int = 3600, token: str | None = None
    ) -> None:
        self._claims = {**EMULATOR_CLAIMS, **(claims or {})}
        self._lifetime = lifetime_seconds
        self._fixed = token
        self._issued: tuple[str, int] | None = None

    def _token(self) -> tuple[str, int]:
        now = int(time.time())
        if self._fixed is not None:
            return self._fixed, now + self._lifetime
        if self._issued is None or self._issued[1] - now < min(300, self._lifetime // 2):
            expires = now + self._lifetime
            payload = {**self._claims, "iat": now, "nbf": now, "exp": expires}
            self._issued = (_jwt(payload), expires)
        return self._issued

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        from azure.core.credentials import AccessToken  # lazy: cold start

        del scopes, claims, tenant_id, enable_cae, kwargs  # the emulator accepts any bearer token
        return AccessToken(*self._token())

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        from azure.core.credentials import AccessTokenInfo  # lazy: cold start

        del scopes, options
        return AccessTokenInfo(*self._token())

    def close(self) -> None:
        """Nothing to release; present so callers can treat every credential alike."""


def _jwt(payload: Mapping[str, Any]) -> str:
    """header.payload.signature, each base64url without padding (RFC 7519); the signature is a placeholder."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    header = {"typ": "JWT", "alg": "RS256", "kid": "emulator"}
    body = json.dumps(payload, separators=(",", ":")).encode()
    return ".".join((part(json.dumps(header).encode()), part(body), part(b"emulator: not signed")))


@functools.cache
def _capped_retry_policy_class() -> Callable[..., RetryPolicy[Any, Any]]:
    from azure.core.pipeline.policies import RetryPolicy  # lazy: cold start

    class CappedRetryPolicy(RetryPolicy[Any, Any]):
        """azure-core's retry policy, but a `Retry-After` never makes it sleep longer than `cap` seconds."""

        def __init__(self, cap: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.retry_after_cap = cap

        def get_retry_after(self, response: Any) -> float | None:
            retry_after = super().get_retry_after(response)
            if retry_after is None:
                return None
            if retry_after > self.retry_after_cap:
                log.info(
                    "Retry-After capped",
                    extra={"retry_after": retry_after, "cap": self.retry_after_cap},
                )
            return min(retry_after, self.retry_after_cap)

    return CappedRetryPolicy


def capped_retry_policy(cap_seconds: float, **kwargs: Any) -> RetryPolicy[Any, Any]:
    """A retry policy whose `Retry-After` sleeps are at most `cap_seconds` (0 falls back to backoff)."""
    return _capped_retry_policy_class()(cap_seconds, **kwargs)


def trusted_hosts(settings: Settings) -> frozenset[HostKey]:
    """The only places a credential may go: the configured ARM and Log Analytics endpoints."""
    keys = {host_key(settings.arm_url), host_key(settings.logs_url)}
    return frozenset(key for key in keys if key is not None)


def refuse_untrusted(url: str, trusted: frozenset[HostKey], what: str = "a request") -> None:
    """Raise `UntrustedHost` unless `url` is on one of the `trusted` endpoints (same scheme, host and port).

    The endpoint is read by `host_key`, the transport's own parser, and an ambiguous URL has none.
    """
    if host_key(url) in trusted:
        return
    shown = url if len(url) <= 200 else url[:200] + "..."
    allowed = ", ".join(f"{scheme}://{host}:{port}" for scheme, host, port in sorted(trusted))
    raise UntrustedHost(
        f"refused to send the Azure credential with {what} to {shown!r}: only the configured endpoints "
        f"({allowed}; RDPR_ARM_URL, RDPR_LOGS_URL) are trusted"
    )


def check_continuation_token(token: str, trusted: frozenset[HostKey]) -> None:
    """Refuse a long-running operation's continuation token (from the ledger) that names any other host.

    The token is azure-core's base64 JSON; every URL inside it (the original request, the polling headers)
    must be on a trusted endpoint, or resuming would send the token wherever the stored row says.
    """
    import base64
    import binascii
    import json

    try:
        state = json.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, ValueError, TypeError):
        raise UntrustedHost("the stored continuation token is not one azure-core made; not resuming") from None
    for text in _strings(state):
        if looks_like_url(text):
            refuse_untrusted(text, trusted, "a stored continuation token")


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


@functools.cache
def _trusted_hosts_policy_class() -> type[SansIOHTTPPolicy[Any, Any]]:
    from azure.core.pipeline.policies import SansIOHTTPPolicy  # lazy: cold start

    class TrustedHostsPolicy(SansIOHTTPPolicy[Any, Any]):
        """Runs on every try, before authentication: no request leaves for a host we do not trust.

        Long-running operations poll whatever URL Azure's `Azure-AsyncOperation` / `Location` headers name,
        and pages follow `nextLink`: without this check the bearer token would follow them anywhere.
        """

        def __init__(self, trusted: frozenset[HostKey]) -> None:
            self.trusted = trusted

        def on_request(self, request: PipelineRequest[Any]) -> None:
            refuse_untrusted(request.http_request.url, self.trusted)

    return TrustedHostsPolicy


def trusted_hosts_policy(trusted: frozenset[HostKey]) -> SansIOHTTPPolicy[Any, Any]:
    return _trusted_hosts_policy_class()(trusted)  # type: ignore[call-arg]


_warmed: set[str] = set()
_warm_lock = threading.Lock()


def _warm_models(module_name: str) -> None:
    """Set up every model class of an SDK module once, under the clients' lock, before any thread uses them.

    The newer generated SDKs (azure-mgmt-compute 37+) compute each model's field table on its first
    instantiation; two threads doing that first instantiation at once can see a half-built table and raise
    AttributeError (seen once in 320 concurrent first calls). Doing it here, once per process, closes the race
    (about 0.3 s, paid by the first compute call only).
    """
    import importlib

    with _warm_lock:  # one process-wide lock: two client sets warming at once would race the same way
        if module_name in _warmed:
            return
        models = importlib.import_module(module_name)
        for name in dir(models):
            model = getattr(models, name)
            new = getattr(model, "__new__", None)
            if isinstance(model, type) and hasattr(model, "_calculated") and callable(new):
                try:
                    new(model)
                except Exception:  # a model that cannot be built bare is set up on first real use instead
                    log.debug("model not warmed", extra={"model": name})
        _warmed.add(module_name)


class AzureClients:
    """Credential and clients for one `Settings`; each built on first use, then shared (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        if settings.emulator:
            _require_loopback("RDPR_ARM_URL", settings.arm_url)
            _require_loopback("RDPR_LOGS_URL", settings.logs_url)
            if not settings.emulator_ca_cert:
                raise ConfigurationError("RDPR_EMULATOR_CA_CERT is required when RDPR_EMULATOR is true")
        self.settings = settings
        self.trusted = trusted_hosts(settings)
        self._lock = threading.RLock()
        self._credential: TokenCredential | None = None
        self._clients: dict[tuple[str, str], Any] = {}

    # --- Credential --------------------------------------------------------------------------------------

    @property
    def credential(self) -> TokenCredential:
        with self._lock:
            if self._credential is None:
                self._credential = self._build_credential()
            return self._credential

    def _build_credential(self) -> TokenCredential:
        if self.settings.emulator:
            log.info("using the emulator's static credential", extra={"arm_url": self.settings.arm_url})
            return StaticTokenCredential()
        from azure.identity import DefaultAzureCredential  # lazy: cold start

        client_id = self.settings.managed_identity_client_id or None
        return DefaultAzureCredential(managed_identity_client_id=client_id)

    # --- Clients -----------------------------------------------------------------------------------------

    def compute(self, subscription_id: str) -> ComputeManagementClient:
        def build() -> ComputeManagementClient:
            from azure.mgmt.compute import ComputeManagementClient  # lazy: cold start

            _warm_models("azure.mgmt.compute.models")
            return ComputeManagementClient(self.credential, subscription_id, **self._arm_options())

        return self._cached("compute", subscription_id.lower(), build)

    def network(self, subscription_id: str) -> NetworkManagementClient:
        def build() -> NetworkManagementClient:
            from azure.mgmt.network import NetworkManagementClient  # lazy: cold start

            return NetworkManagementClient(self.credential, subscription_id, **self._arm_options())

        return self._cached("network", subscription_id.lower(), build)

    def monitor(self, subscription_id: str) -> MonitorManagementClient:
        """Azure Monitor's management API: the Activity Log (was a restart accepted?)."""

        def build() -> MonitorManagementClient:
            from azure.mgmt.monitor import MonitorManagementClient  # lazy: cold start

            return MonitorManagementClient(self.credential, subscription_id, **self._arm_options())

        return self._cached("monitor", subscription_id.lower(), build)

    def resource_graph(self) -> ResourceGraphClient:
        def build() -> ResourceGraphClient:
            from azure.mgmt.resourcegraph import ResourceGraphClient  # lazy: cold start

            return ResourceGraphClient(self.credential, **self._arm_options())

        return self._cached("resourcegraph", "", build)

    def logs(self) -> LogsQueryClient:
        def build() -> LogsQueryClient:
            from azure.monitor.query import LogsQueryClient  # lazy: cold start

            options = self._common_options()
            options.pop("polling_interval", None)  # queries are not long-running operations
            if not self.settings.emulator and self.settings.logs_url.rstrip("/") != PUBLIC_LOGS_URL:
                # The client derives its token scope from the endpoint; a custom endpoint still needs
                # tokens for Log Analytics itself.
                options["audience"] = LOGS_AUDIENCE
            return LogsQueryClient(self.credential, endpoint=self.settings.logs_url, **options)

        return self._cached("logs", "", build)

    def _cached(self, kind: str, key: str, build: Callable[[], _T]) -> _T:
        with self._lock:
            client = self._clients.get((kind, key))
            if client is None:
                client = build()
                self._clients[kind, key] = client
                log.debug("built Azure client", extra={"client": kind, "subscription": key or None})
            return client

    def _arm_options(self) -> dict[str, Any]:
        options = self._common_options()
        options["base_url"] = self.settings.arm_url
        if not self.settings.emulator:
            # Sovereign clouds: the token audience follows the ARM endpoint.
            options["credential_scopes"] = [f"{self.settings.arm_url}/.default"]
        return options

    def _common_options(self) -> dict[str, Any]:
        settings = self.settings
        total = settings.retry_total
        options: dict[str, Any] = {
            # azure-core counts retries per kind too (connect 3, read 3, status 3 by default) and stops at the
            # first count that runs out: set them all, so RDPR_RETRY_TOTAL governs every kind of retry.
            "retry_policy": capped_retry_policy(
                settings.retry_after_cap_seconds,
                retry_total=total,
                retry_connect=total,
                retry_read=total,
                retry_status=total,
                retry_backoff_factor=settings.retry_backoff_seconds,
                retry_backoff_max=60,
            )
        }
        if settings.poll_interval_seconds is not None:
            options["polling_interval"] = settings.poll_interval_seconds
        # In real mode as in emulator mode: the credential goes to the configured endpoints and nowhere else.
        options["per_retry_policies"] = [trusted_hosts_policy(self.trusted)]
        if settings.emulator:
            options["connection_verify"] = settings.emulator_ca_cert
        return options

    # --- Lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every client's connection pool and the credential (tests and the CLI call this)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            credential, self._credential = self._credential, None
        for client in clients:
            client.close()
        close = getattr(credential, "close", None)
        if callable(close):
            close()


_instance: AzureClients | None = None
_instance_lock = threading.Lock()


def get_clients(settings: Settings | None = None) -> AzureClients:
    """The process-wide clients, built from `settings` (default: the environment's) on first use."""
    global _instance  # noqa: PLW0603 - one set of clients per process is the point
    with _instance_lock:
        if _instance is None:
            _instance = AzureClients(settings or get_settings())
        elif settings is not None and settings != _instance.settings:
            raise ConfigurationError(
                "the process-wide Azure clients were built for other settings; call reset_clients() first"
            )
        return _instance


def reset_clients() -> None:
    """Close and forget the process-wide clients (tests, or a settings reload)."""
    global _instance
    with _instance_lock:
        instance, _instance = _instance, None
    if instance is not None:
        instance.close()
