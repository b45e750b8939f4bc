//! The client side of TLS: a terminal's certificate, the clinic CA, and no session resumption.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Which key exchange the client offers on TLS 1.3.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kx {
    /// rustls' default: X25519MLKEM768 (hybrid post-quantum) first, then X25519, P-256, P-384
    Default,
    /// X25519 only: what both OpenSSL 3.0 (Debian's nginx) and rustls pick, for like-for-like runs
    X25519,
}

#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// The client certificate chain presented to the server (PEM)
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1)
    #[arg(long)]
    key: PathBuf,
    /// The CA that signed the server's certificate (PEM)
    #[arg(long)]
    ca: PathBuf,
    /// The name checked against the server's certificate and sent as SNI
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The server's address
    #[arg(long)]
    pub addr: std::net::SocketAddr,
    /// Key exchange groups offered
    #[arg(long, value_enum, default_value = "default")]
    kx: Kx,
}

/// Connects over TCP and TLS; every connection is a full handshake (resumption is disabled).
#[derive(Clone)]
pub struct Dialer {
    connector: TlsConnector,
    host: String,
    server_name: ServerName<'static>,
    addr: std::net::SocketAddr,
}

impl Dialer {
    pub fn new(args: &TlsArgs) -> Result<Dialer, Error> {
        let chain = certificates(&args.cert)?;
        let key = PrivateKeyDer::from_pem_file(&args.key)
            .map_err(|e| format!("{}: not a PEM private key: {e}", args.key.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(&args.ca)? {
            roots
                .add(ca)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", args.ca.display()))?;
        }
        let mut provider = aws_lc_rs::default_provider();
        if let Kx::X25519 = args.kx {
            provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                format!(
                    "{}: does not match {}: {e}",
                    args.key.display(),
                    args.cert.display()
                )
            })?;
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(args.server_name.clone())
            .map_err(|e| format!("--server-name {}: {e}", args.server_name))?;
        Ok(Dialer {
            connector: TlsConnector::from(Arc::new(config)),
            host: args.server_name.clone(),
            server_name,
            addr: args.addr,
        })
    }

    /// The server's name, for the Host header.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub async fn connect(&self) -> Result<TlsStream<TcpStream>, Error> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", self.addr))?;
        Ok(tls)
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()).into());
    }
    Ok(certs)
}
