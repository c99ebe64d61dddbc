//! Who is calling, and what they may do.
//!
//! A client proves its host identity with a TLS client certificate signed
//! by `tls.client_ca` (identity: the certificate's common name, else its
//! first DNS name) or with a bearer token whose SHA-256 is listed under
//! `tokens`. When neither is configured, the server is open (it refuses
//! to listen on a non-loopback address that way unless
//! `allow_unauthenticated` is set) and every caller is [`Caller::Anonymous`].
//!
//! Rules: a host writes records (datasets, job status) only for itself;
//! `acl.admins` write for any host; anybody authenticated may read unless
//! `acl.readers` lists who may.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Acl, MetadbConfig, TlsFiles};
use super::error::ApiError;
use super::{AppState, PeerInfo};

/// The authenticated party of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody in particular: the server requires no authentication.
    Anonymous,
    /// A host identified by certificate or token.
    Host(String),
}

impl Caller {
    /// The identity for logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Host(h) => h,
        }
    }
}

/// The access rules of a server.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// Whether requests must carry an identity.
    pub required: bool,
    /// Token hashes: host -> SHA-256 of its token.
    pub tokens: BTreeMap<String, [u8; 32]>,
    /// Admins and readers.
    pub acl: Acl,
}

impl AuthPolicy {
    /// The policy a configuration asks for.
    pub fn from_config(config: &MetadbConfig) -> AuthPolicy {
        AuthPolicy {
            required: config.auth_required(),
            tokens: config.tokens.clone(),
            acl: config.acl.clone(),
        }
    }

    /// The host whose token this is, comparing in constant time.
    fn token_host(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (host, hash) in &self.tokens {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(host.as_str());
            }
        }
        found
    }

    /// Who is calling, from the TLS client certificate's identity (if any)
    /// and the `Authorization` header (if any).
    pub fn authenticate(
        &self,
        cert_identity: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let token_identity = match authorization {
            None => None,
            Some(value) => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        ApiError::Unauthorized(
                            "the Authorization header must be `Bearer <token>`".to_owned(),
                        )
                    })?;
                if self.tokens.is_empty() {
                    if self.required {
                        return Err(ApiError::Unauthorized(
                            "this server does not accept bearer tokens: use a client certificate"
                                .to_owned(),
                        ));
                    }
                    None
                } else {
                    Some(self.token_host(token).ok_or_else(|| {
                        ApiError::Unauthorized("the bearer token is not valid".to_owned())
                    })?)
                }
            }
        };
        match (cert_identity, token_identity) {
            (Some(c), Some(t)) if c != t => Err(ApiError::Unauthorized(format!(
                "the client certificate says {c:?} but the bearer token belongs to {t:?}"
            ))),
            (Some(id), _) | (None, Some(id)) => Ok(Caller::Host(id.to_owned())),
            (None, None) if !self.required => Ok(Caller::Anonymous),
            (None, None) => Err(ApiError::Unauthorized(
                "authentication required: present a client certificate signed by the fleet CA \
                 or an `Authorization: Bearer <token>` header"
                    .to_owned(),
            )),
        }
    }

    /// Whether `caller` may search and list.
    pub fn check_read(&self, caller: &Caller) -> Result<(), ApiError> {
        match (caller, &self.acl.readers) {
            (Caller::Anonymous, _) | (Caller::Host(_), None) => Ok(()),
            (Caller::Host(h), Some(readers)) => {
                if readers.contains(h) || self.acl.admins.contains(h) {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(format!(
                        "{h:?} may not read the index (not in acl.readers)"
                    )))
                }
            }
        }
    }

    /// Whether `caller` may write records that belong to `host`.
    pub fn check_write(&self, caller: &Caller, host: &str) -> Result<(), ApiError> {
        match caller {
            Caller::Anonymous => Ok(()),
            Caller::Host(h) if h == host || self.acl.admins.contains(h) => Ok(()),
            Caller::Host(h) => Err(ApiError::Forbidden(format!(
                "{h:?} may not write records of host {host:?}: a host writes only its own \
                 (or list it in acl.admins)"
            ))),
        }
    }
}

/// Extract the [`Caller`] of a request (401 if it must authenticate and
/// did not).
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        let cert = parts
            .extensions
            .get::<axum::extract::ConnectInfo<PeerInfo>>()
            .and_then(|c| c.0.identity.clone());
        let authorization = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not text".to_owned())
            })?),
        };
        state.auth.authenticate(cert.as_deref(), authorization)
    }
}

/// The host identity in a client certificate: its subject's common name,
/// else its first DNS subject alternative name.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) if !d.is_empty() => Some((*d).to_owned()),
        _ => None,
    })
}

/// Errors preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file (`tls.cert`, ...).
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the combination.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// Read every certificate of a PEM file.
fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |message: String| TlsSetupError::File {
        what,
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

/// The rustls server configuration for `files`. With a client CA,
/// clients must present a certificate it signed, unless `tokens_too`
/// (then a certificate is optional and token clients are authenticated
/// per request).
pub fn server_tls_config(
    files: &TlsFiles,
    tokens_too: bool,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs("tls.cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsSetupError::File {
        what: "tls.key",
        path: files.key.display().to_string(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("tls.client_ca", ca)? {
                roots.add(cert).map_err(|e| TlsSetupError::File {
                    what: "tls.client_ca",
                    path: ca.display().to_string(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tokens_too {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Rustls(format!("tls.cert and tls.key: {e}")))?;
    // The server speaks HTTP/1.1 only (hyper's http1 connection, with its
    // header read timeout and graceful drain): advertising h2 made curl and
    // every browser pick HTTP/2 and fail on the first frame (issue 10).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn policy(tokens: &[(&str, &str)], admins: &[&str], readers: Option<&[&str]>) -> AuthPolicy {
        AuthPolicy {
            required: true,
            tokens: tokens
                .iter()
                .map(|(h, t)| ((*h).to_owned(), Sha256::digest(t.as_bytes()).into()))
                .collect(),
            acl: Acl {
                admins: admins.iter().map(|s| (*s).to_owned()).collect(),
                readers: readers.map(|r| r.iter().map(|s| (*s).to_owned()).collect::<HashSet<_>>()),
            },
        }
    }

    #[test]
    fn tokens_and_certificates_identify_hosts() {
        let p = policy(&[("h1", "t1"), ("h2", "t2")], &[], None);
        assert_eq!(
            p.authenticate(None, Some("Bearer t2")).unwrap(),
            Caller::Host("h2".into())
        );
        assert_eq!(
            p.authenticate(Some("h1"), None).unwrap(),
            Caller::Host("h1".into())
        );
        assert_eq!(
            p.authenticate(Some("h1"), Some("Bearer t1")).unwrap(),
            Caller::Host("h1".into())
        );
        for (cert, auth) in [
            (None, None),
            (None, Some("Bearer nope")),
            (None, Some("Basic aDE6dDE=")),
            (Some("h1"), Some("Bearer t2")),
        ] {
            let e = p.authenticate(cert, auth).unwrap_err();
            assert!(
                matches!(e, ApiError::Unauthorized(_)),
                "{cert:?} {auth:?}: {e}"
            );
        }
        let open = AuthPolicy::default();
        assert_eq!(open.authenticate(None, None).unwrap(), Caller::Anonymous);
        assert_eq!(
            open.authenticate(None, Some("Bearer x")).unwrap(),
            Caller::Anonymous
        );
    }

    #[test]
    fn hosts_write_only_their_own_records_unless_admin() {
        let p = policy(&[], &["admin"], None);
        let h1 = Caller::Host("h1".into());
        assert!(p.check_write(&h1, "h1").is_ok());
        let e = p.check_write(&h1, "h2").unwrap_err();
        assert!(matches!(e, ApiError::Forbidden(_)), "{e}");
        assert!(p.check_write(&Caller::Host("admin".into()), "h2").is_ok());
        assert!(p.check_write(&Caller::Anonymous, "h2").is_ok());
        assert!(p.check_read(&h1).is_ok());
    }

    #[test]
    fn readers_restrict_reading() {
        let p = policy(&[], &["admin"], Some(&["restorer"]));
        assert!(p.check_read(&Caller::Host("restorer".into())).is_ok());
        assert!(p.check_read(&Caller::Host("admin".into())).is_ok());
        assert!(matches!(
            p.check_read(&Caller::Host("h1".into())),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn identity_is_common_name_else_first_dns_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["dns1.example".into(), "dns2".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "host-cn");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_identity(cert.der()).as_deref(), Some("host-cn"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_identity(cert.der()).as_deref(),
            Some("dns1.example")
        );
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }
}
