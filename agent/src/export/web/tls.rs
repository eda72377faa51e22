//! The rustls server configuration of `tls_server_config`, from the files
//! it names as read (bounded, regular files only: `config::read_file`).

use std::{path::Path, sync::Arc};

use anyhow::{Result, anyhow, bail};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use super::config::{ClientAuth, Tls, Version, read_file};

/// The files of a `tls_server_config` as read: what a configuration's TLS
/// terms are, beside its keys (a rotated certificate is a change).
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// Never the key in a log line or a test failure.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert.len())
            .field("key", &"(hidden)")
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl Pem {
    /// The files' contents as the collector read them (`channel::Terms`).
    pub fn new(cert: Vec<u8>, key: Vec<u8>, client_ca: Option<Vec<u8>>) -> Self {
        Self {
            cert,
            key,
            client_ca,
        }
    }

    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn client_ca(&self) -> Option<&[u8]> {
        self.client_ca.as_deref()
    }

    /// Reads the certificate, key and client CA files; an error names the key.
    pub fn read(tls: &Tls) -> Result<Self> {
        let read = |key: &str, path: &Path| {
            read_file(path)
                .map_err(|e| anyhow!("tls_server_config.{key}: reading {}: {e:#}", path.display()))
        };
        Ok(Self {
            cert: read("cert_file", &tls.cert_file)?,
            key: read("key_file", &tls.key_file)?,
            client_ca: tls
                .client_ca_file
                .as_deref()
                .map(|path| read("client_ca_file", path))
                .transpose()?,
        })
    }
}

pub fn server_config(tls: &Tls, pem: &Pem) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(tls.provider());
    let certs = certificates("cert_file", &tls.cert_file, &pem.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| {
        anyhow!(
            "tls_server_config.key_file: reading {}: {e}",
            tls.key_file.display()
        )
    })?;
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (Version::Tls12, &rustls::version::TLS12),
        (Version::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let verified = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>> {
        // Validated with the file (`config.rs`), and decoded with it
        // (`channel/`): an error only if that changed.
        let (Some(path), Some(ca)) = (tls.client_ca_file.as_deref(), pem.client_ca.as_deref())
        else {
            bail!("tls_server_config.client_ca_file: missing");
        };
        let roots = client_roots(path, ca)?;
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| anyhow!("tls_server_config.client_ca_file: {e}"))
    };
    let verifier: Arc<dyn ClientCertVerifier> = match tls.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert => Arc::new(AnyClientCert {
            mandatory: false,
            provider: provider.clone(),
        }),
        ClientAuth::RequireAnyClientCert => Arc::new(AnyClientCert {
            mandatory: true,
            provider: provider.clone(),
        }),
        ClientAuth::VerifyClientCertIfGiven => verified(true)?,
        ClientAuth::RequireAndVerifyClientCert => verified(false)?,
    };
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| anyhow!("tls_server_config.min_version: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow!(
                "tls_server_config.key_file: {e} (with cert_file {})",
                tls.cert_file.display()
            )
        })?;
    // HTTP/1.1 only; a client offering h2 too falls back to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    Ok(Arc::new(config))
}

/// The CA certificates of `client_ca_file`.
fn client_roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("client_ca_file", path, pem)? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("tls_server_config.client_ca_file: {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The certificates of a PEM file (`path`, read as `pem`); at least one.
fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let what = || format!("tls_server_config.{key}: reading {}", path.display());
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {e}", what()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate in it", what());
    }
    Ok(certs)
}

/// `RequestClientCert` and `RequireAnyClientCert`: like Go's crypto/tls
/// under exporter-toolkit, the client proves it holds the key of the
/// certificate it sends, and nothing checks who issued it.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
