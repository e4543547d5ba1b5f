"""gRPC credentials for link servers and clients from a service's :class:`FlowerTls`.

Servers demand a client certificate from the project's CA (mutual TLS): the certificate's common
name is the node's identity, and a hello that claims another name is refused. ``None`` means a
plain link (development only; the manager warns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from flops_utils.service_config import FlowerTls


class LinkTlsError(ValueError):
    """The TLS material cannot serve the asked role."""


def server_credentials(tls: FlowerTls) -> grpc.ServerCredentials:
    if not (tls.cert_pem and tls.key_pem):
        raise LinkTlsError("a link server needs its certificate and key (flower_tls.cert_pem/key_pem)")
    return grpc.ssl_server_credentials(
        [(tls.key_pem.encode(), tls.cert_pem.encode())],
        root_certificates=tls.ca_pem.encode(),
        require_client_auth=True,
    )


def channel_credentials(tls: FlowerTls) -> grpc.ChannelCredentials:
    if not (tls.client_cert_pem and tls.client_key_pem):
        raise LinkTlsError("a link client needs its own certificate (flower_tls.client_cert_pem/client_key_pem)")
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem.encode(),
        private_key=tls.client_key_pem.encode(),
        certificate_chain=tls.client_cert_pem.encode(),
    )


def peer_common_name(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The verified client certificate's common name, or None on a plain link."""
    names = auth_context.get("x509_common_name") or []
    return names[0].decode() if names else None
