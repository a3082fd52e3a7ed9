//! TLS material for the health service, read from PEM files (as OVN-K does with its northbound
//! database certificates). rustls with the *ring* provider; no aws-lc.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::Error;

/// The agent side: the certificate (chain) and private key the health server presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The controller side: the CA that signs the agents' certificates, and the name to expect in
/// them (OVN-K's `CertCommonName`); without a name the probed IP address must be in the
/// certificate's subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_cert: PathBuf,
    pub server_name: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ServerTls {
    /// Reads the files; their contents are validated when the server starts.
    pub fn load(&self) -> Result<ServerTlsConfig, Error> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        Ok(ServerTlsConfig::new().identity(identity))
    }
}

impl ClientTls {
    /// Reads the CA file.
    pub fn load(&self) -> Result<ClientTlsConfig, Error> {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca_cert)?));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// tonic's server side uses rustls' process-wide default provider. With only *ring* compiled in,
/// rustls picks it by itself; should another crate of the binary also enable aws-lc, rustls
/// would refuse to choose, so install *ring* unless a provider is already set.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is set either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
