"""A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client
certificate named client.example, made with openssl for the TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def make_certs(workdir: Path) -> Certs:
    d = workdir / "certs"
    d.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tokenbroker test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    for name, san, usage in (
        ("server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
        ("client", "DNS:client.example", "clientAuth"),
    ):
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
        )
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return Certs(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


def tls_config(certs: Certs) -> str:
    """[server.tls] with client certificates, and a caller known by its certificate."""
    return f"""
[server.tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
client_ca_file = "{certs.ca}"

[[callers]]
name = "tls-tests"
tls_names = ["client.example"]
orgs = ["*"]
permissions = ["org_token", "user_token", "refresh", "watch"]
"""
