#!/usr/bin/env python3
"""Write TEST-ONLY TLS certificates and SuperNode key pairs for a secure Flower deployment.

    python scripts/make_test_certs.py OUT_DIR [--supernodes N] [--host NAME_OR_IP ...]

Writes into OUT_DIR (created if missing):

    ca.crt, ca.key            self-signed test CA (PEM); ca.crt is what clients trust
                              (SuperNode --root-certificates, flwr CLI root-certificates,
                              SuperLink --ssl-ca-certfile)
    server.pem, server.key    server certificate signed by the CA, valid for 127.0.0.1,
                              ::1 and localhost plus any --host (SuperLink --ssl-certfile /
                              --ssl-keyfile; also usable for a SuperNode's own Runtime API)
    supernode-<i>.key         SuperNode i's EC P-384 private key, OpenSSH format
                              (flower-supernode --auth-supernode-private-key)
    supernode-<i>.pub         its public key, OpenSSH format (flwr supernode register)

These files are for tests and local experiments only: the CA key is unencrypted and the
certificates live 30 days. Never commit them; write them to a temporary folder or to an
ignored one (e.g. runs/). The script refuses to write into a git work tree where the folder
is not ignored, unless given --force.

Formats are the ones flwr 1.41 loads: PEM certificates/keys for the HTTPS servers (uvicorn /
Python ssl), and OpenSSH EC keys on a NIST curve for SuperNode authentication (the same as
`ssh-keygen -t ecdsa -b 384 -N "" -f supernode-0`).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpress test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # de-duplicate, keep order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates (no intermediates)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedpress test CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for `hosts` (IPs and DNS names), signed by the CA."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_supernode_keys(out: Path, count: int) -> list[tuple[Path, Path]]:
    """Write `count` EC P-384 key pairs in OpenSSH format; return (private, public) paths."""
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private_path, public_path = out / f"supernode-{i}.key", out / f"supernode-{i}.pub"
        _write(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            secret=True,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(public_path, public + f" fedpress-supernode-{i}\n".encode())
        pairs.append((private_path, public_path))
    return pairs


def write_test_material(out: Path, supernodes: int, hosts: list[str] | None = None) -> None:
    """Write the CA, the server certificate and `supernodes` SuperNode key pairs to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = make_ca(now)
    server_key, server_cert = make_server_cert(
        ca_key, ca_cert, [*DEFAULT_HOSTS, *(hosts or [])], now
    )
    _write(out / "ca.key", _pem_key(ca_key), secret=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_key(server_key), secret=True)
    _write(out / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    make_supernode_keys(out, supernodes)


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)


def _unignored_in_git_tree(folder: Path) -> bool:
    """Whether `folder` lies in a git work tree and is not ignored there (could be committed)."""
    probe = folder if folder.exists() else folder.parent
    while not probe.exists():
        probe = probe.parent
    try:
        inside = subprocess.run(
            ["git", "-C", str(probe), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            check=False,
        )
        if inside.stdout.strip() != "true":
            return False
        ignored = subprocess.run(
            ["git", "-C", str(probe), "check-ignore", "-q", str(folder / "ca.key")],
            capture_output=True,
            check=False,
        )
    except OSError:  # no git: nothing to protect
        return False
    return ignored.returncode != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write into (created if missing)")
    parser.add_argument(
        "--supernodes", type=int, default=2, help="number of SuperNode key pairs (default 2)"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra IP or DNS name for the server certificate (repeatable)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write even into a non-ignored git folder"
    )
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error("--supernodes must be >= 0")
    out = args.out_dir.expanduser().resolve()
    if not args.force and _unignored_in_git_tree(out):
        parser.error(
            f"{out} is inside a git work tree and not ignored: these test keys must never be "
            "committed. Use a temporary or ignored folder (e.g. runs/certs), or --force."
        )
    write_test_material(out, args.supernodes, args.host)
    print(f"Wrote test CA, server certificate and {args.supernodes} SuperNode key pairs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
