//! Configuration of the metadata server (`metadb.yml`), command-line
//! overrides, and the checks done before listening.
//!
//! ```yaml
//! listen: 0.0.0.0:7443
//! database: postgres://tabacco@db.example/tabacco   # or sqlite:///var/lib/tabacco/metadb.sqlite
//! tls: {cert: server.pem, key: server.key, client_ca: fleet-ca.pem}
//! acl: {admins: [backup-admin], readers: [restore-host]}
//! tokens: {host1: <sha256 hex of host1's token>}
//! tokens_file: tokens.yml
//! max_body_bytes: 16777216
//! allow_unauthenticated: false
//! stale_after: 2d
//! max_connections: 1024
//! silent_after: 2m
//! ```
//!
//! Relative paths are relative to the directory of the file. Every field
//! is optional; a flag given on the command line wins over the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::metadata::DatabaseUrl;

/// Where the server listens unless told otherwise (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The database unless told otherwise.
pub const DEFAULT_DATABASE: &str = "sqlite:///var/lib/tabacco/metadb.sqlite";
/// Largest request body accepted unless told otherwise (16 MiB: a dataset
/// of about 100 000 atoms).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// Age of a host's newest backup after which the web page highlights it.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(2 * 24 * 3600);
/// Most client connections served at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A configuration problem, with the file (or flag) and field.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// `file: field` or `--flag`.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// `metadb.yml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on, `host:port`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Database URL: `sqlite:///path` or `postgres://...`.
    #[serde(default)]
    pub database: Option<String>,
    /// TLS settings; without them the server speaks plain HTTP.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Who may do what beyond the defaults.
    #[serde(default)]
    pub acl: RawAcl,
    /// Bearer tokens: host name -> SHA-256 (hex) of the host's token.
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// A YAML file with more `host: sha256-hex` entries.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Largest request body in bytes.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Allow listening on a non-loopback address without client
    /// certificates or tokens.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Age (`36h`, `2d`) after which a host's last backup is stale.
    #[serde(default)]
    pub stale_after: Option<String>,
    /// Most client connections served at once (more wait in the listen
    /// queue until one closes).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Time (`2m`, `90s`) without a report after which a host is silent.
    #[serde(default)]
    pub silent_after: Option<String>,
}

/// The `tls` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Server certificate chain (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates; set, clients
    /// must present one (or a bearer token, if tokens are configured).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The `acl` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    /// Identities that may write records of any host (and read).
    #[serde(default)]
    pub admins: Vec<String>,
    /// If set, only these identities (and admins) may search and list;
    /// by default any authenticated host may.
    #[serde(default)]
    pub readers: Option<Vec<String>>,
}

/// Command-line overrides (each wins over the file when set).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--database`.
    pub database: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--tokens-file`.
    pub tokens_file: Option<PathBuf>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `--stale-after`.
    pub stale_after: Option<String>,
    /// `--silent-after`.
    pub silent_after: Option<String>,
}

/// Resolved TLS file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Client CA bundle (PEM), if client certificates are required.
    pub client_ca: Option<PathBuf>,
}

/// Who may do what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// May write records of any host, and read.
    pub admins: HashSet<String>,
    /// If `Some`, only these (and admins) may read.
    pub readers: Option<HashSet<String>>,
}

/// The resolved server configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct MetadbConfig {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// The database.
    pub database: DatabaseUrl,
    /// TLS files; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Access rules.
    pub acl: Acl,
    /// Token hashes: host -> SHA-256 of its token.
    pub tokens: BTreeMap<String, [u8; 32]>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Listen on non-loopback addresses without authentication.
    pub allow_unauthenticated: bool,
    /// When a host's newest backup counts as stale.
    pub stale_after: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// When a host that stopped reporting counts as silent (or three of
    /// its report intervals, if longer).
    pub silent_after: Duration,
}

impl std::fmt::Debug for MetadbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Token hashes are not secrets, but there is no need to print them.
        f.debug_struct("MetadbConfig")
            .field("listen", &self.listen)
            .field("database", &self.database.to_string())
            .field("tls", &self.tls)
            .field("acl", &self.acl)
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("stale_after", &self.stale_after)
            .field("max_connections", &self.max_connections)
            .field("silent_after", &self.silent_after)
            .finish()
    }
}

impl MetadbConfig {
    /// Whether clients must authenticate (client CA or tokens configured).
    pub fn auth_required(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) || !self.tokens.is_empty()
    }
}

/// Parse a YAML document, naming the field of an error.
fn parse_yaml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    crate::config::load::parse_doc(text).map_err(|e| ConfigError {
        location: if e.path.is_empty() {
            file.display().to_string()
        } else {
            format!("{}: {}", file.display(), e.path)
        },
        message: e.message,
    })
}

/// Read `metadb.yml`.
pub fn read_file(file: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        location: file.display().to_string(),
        message: format!("cannot read the metadata server configuration: {e}"),
    })?;
    if crate::config::load::is_blank_yaml(&text) {
        return Ok(RawConfig::default());
    }
    parse_yaml(file, &text)
}

/// Decode a token hash: 64 hex digits.
fn token_hash(location: &str, host: &str, hex_hash: &str) -> Result<[u8; 32], ConfigError> {
    let bad = || ConfigError {
        location: format!("{location}: {host}"),
        message: "expected the SHA-256 of the token as 64 hex digits \
                  (e.g. the output of `printf %s TOKEN | sha256sum`)"
            .to_owned(),
    };
    let bytes = hex::decode(hex_hash.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// Resolve the file (read from `file`, whose directory anchors relative
/// paths; `None` when running on flags alone) and the overrides.
pub fn resolve(
    raw: RawConfig,
    file: Option<&Path>,
    over: Overrides,
) -> Result<MetadbConfig, ConfigError> {
    let file_name = file.map_or_else(|| "metadb".to_owned(), |f| f.display().to_string());
    let base = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    // Paths given on the command line are relative to the working
    // directory, as usual for flags.
    let at = |field: &str| format!("{file_name}: {field}");

    let listen = over
        .listen
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let database_text = over
        .database
        .clone()
        .or(raw.database)
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let db_base = if over.database.is_some() {
        PathBuf::from(".")
    } else {
        base.clone()
    };
    let database = DatabaseUrl::parse(&database_text, &db_base).map_err(|message| ConfigError {
        location: if over.database.is_some() {
            "--database".to_owned()
        } else {
            at("database")
        },
        message,
    })?;

    let raw_tls = raw.tls.unwrap_or_default();
    let cert = over.tls_cert.or_else(|| raw_tls.cert.map(&rel));
    let key = over.tls_key.or_else(|| raw_tls.key.map(&rel));
    let client_ca = over.tls_client_ca.or_else(|| raw_tls.client_ca.map(&rel));
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) if client_ca.is_none() => None,
        (None, None) => {
            return Err(ConfigError {
                location: at("tls.client_ca"),
                message: "client certificates need TLS: set tls.cert and tls.key too".to_owned(),
            });
        }
        (Some(_), None) => {
            return Err(ConfigError {
                location: at("tls.key"),
                message: "tls.cert is set but tls.key is not: give the server's private key"
                    .to_owned(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError {
                location: at("tls.cert"),
                message: "tls.key is set but tls.cert is not: give the server's certificate"
                    .to_owned(),
            });
        }
    };

    let mut tokens = BTreeMap::new();
    for (host, h) in &raw.tokens {
        tokens.insert(host.clone(), token_hash(&at("tokens"), host, h)?);
    }
    let tokens_file = over.tokens_file.or_else(|| raw.tokens_file.map(&rel));
    if let Some(tf) = tokens_file {
        let text = std::fs::read_to_string(&tf).map_err(|e| ConfigError {
            location: tf.display().to_string(),
            message: format!("cannot read the tokens file: {e}"),
        })?;
        let more: BTreeMap<String, String> = if crate::config::load::is_blank_yaml(&text) {
            BTreeMap::new()
        } else {
            parse_yaml(&tf, &text)?
        };
        let loc = tf.display().to_string();
        for (host, h) in &more {
            if tokens.contains_key(host) {
                return Err(ConfigError {
                    location: format!("{loc}: {host}"),
                    message: "this host also has a token in the tokens section; keep one"
                        .to_owned(),
                });
            }
            tokens.insert(host.clone(), token_hash(&loc, host, h)?);
        }
    }
    for host in tokens.keys() {
        if host.is_empty() {
            return Err(ConfigError {
                location: at("tokens"),
                message: "a token entry has an empty host name".to_owned(),
            });
        }
    }

    let max_body_bytes = over
        .max_body_bytes
        .or(raw.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes < 1024 {
        return Err(ConfigError {
            location: at("max_body_bytes"),
            message: format!("{max_body_bytes} bytes is too small: give at least 1024"),
        });
    }
    let stale_after = match over.stale_after.or(raw.stale_after) {
        None => DEFAULT_STALE_AFTER,
        Some(text) => humantime::parse_duration(&text).map_err(|e| ConfigError {
            location: at("stale_after"),
            message: format!("{text:?} is not a duration such as 36h or 2d: {e}"),
        })?,
    };
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError {
            location: at("max_connections"),
            message: "0 would serve nobody: give at least 1".to_owned(),
        });
    }
    let silent_after = match over.silent_after.or(raw.silent_after) {
        None => crate::metadb::fleet::DEFAULT_SILENT_AFTER,
        Some(text) => humantime::parse_duration(&text).map_err(|e| ConfigError {
            location: at("silent_after"),
            message: format!("{text:?} is not a duration such as 2m or 90s: {e}"),
        })?,
    };
    Ok(MetadbConfig {
        listen,
        database,
        tls,
        acl: Acl {
            admins: raw.acl.admins.into_iter().collect(),
            readers: raw.acl.readers.map(|r| r.into_iter().collect()),
        },
        tokens,
        max_body_bytes,
        allow_unauthenticated: raw.allow_unauthenticated || over.allow_unauthenticated,
        stale_after,
        max_connections,
        silent_after,
    })
}

/// Refuse to serve a non-loopback address with no way to authenticate
/// clients, unless `allow_unauthenticated` is set. `addrs` are the
/// addresses `listen` resolved to.
pub fn check_exposure(config: &MetadbConfig, addrs: &[SocketAddr]) -> Result<(), ConfigError> {
    let exposed: Vec<&SocketAddr> = addrs.iter().filter(|a| !a.ip().is_loopback()).collect();
    if exposed.is_empty() || config.auth_required() || config.allow_unauthenticated {
        return Ok(());
    }
    Err(ConfigError {
        location: "listen".to_owned(),
        message: format!(
            "refusing to listen on {} without authentication: anyone who can reach it could \
             read the whole index and write records for any host. Configure client \
             certificates (tls.client_ca) or bearer tokens (tokens / tokens_file), listen on a \
             loopback address, or set allow_unauthenticated: true if the network is trusted",
            config.listen
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawConfig {
        parse_yaml(Path::new("/etc/tabacco/metadb.yml"), yaml).unwrap()
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn defaults_without_a_file() {
        let c = resolve(RawConfig::default(), None, Overrides::default()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite("/var/lib/tabacco/metadb.sqlite".into())
        );
        assert!(c.tls.is_none() && c.tokens.is_empty() && !c.auth_required());
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.stale_after, DEFAULT_STALE_AFTER);
    }

    #[test]
    fn file_paths_are_relative_to_the_file_and_flags_win() {
        let r = raw(&format!(
            "listen: 0.0.0.0:9000\ndatabase: sqlite://db/meta.sqlite\ntls:\n  cert: c.pem\n  key: /k.pem\n  client_ca: ca.pem\nacl:\n  admins: [root]\n  readers: [a, b]\ntokens:\n  h1: {HASH}\nmax_body_bytes: 4096\nstale_after: 36h\n"
        ));
        let file = Path::new("/etc/tabacco/metadb.yml");
        let c = resolve(r, Some(file), Overrides::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite("/etc/tabacco/db/meta.sqlite".into())
        );
        let tls = c.tls.clone().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/tabacco/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/tabacco/ca.pem")));
        assert!(c.acl.admins.contains("root"));
        assert_eq!(c.acl.readers.as_ref().map(HashSet::len), Some(2));
        assert_eq!(hex::encode(c.tokens["h1"]), HASH);
        assert_eq!(c.max_body_bytes, 4096);
        assert_eq!(c.stale_after, Duration::from_secs(36 * 3600));
        assert!(c.auth_required());

        let r = raw("listen: 0.0.0.0:9000\nmax_body_bytes: 4096\n");
        let over = Overrides {
            listen: Some("127.0.0.1:0".into()),
            database: Some("postgres://u:pw@h/db".into()),
            max_body_bytes: Some(2048),
            allow_unauthenticated: true,
            ..Overrides::default()
        };
        let c = resolve(r, Some(file), over).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(
            c.database,
            DatabaseUrl::Postgres("postgres://u:pw@h/db".into())
        );
        assert_eq!(c.max_body_bytes, 2048);
        assert!(c.allow_unauthenticated);
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            parse_yaml::<RawConfig>(Path::new("m.yml"), "tls:\n  cert: a\n  kee: b\n").unwrap_err();
        assert!(e.to_string().contains("m.yml"), "{e}");
        assert!(e.to_string().contains("kee"), "{e}");
        let e = resolve(raw("tls:\n  cert: a\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("tls.key"), "{e}");
        let e = resolve(raw("tls:\n  client_ca: a\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("need TLS"), "{e}");
        let e = resolve(raw("tokens:\n  h1: abc\n"), None, Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("tokens: h1") && e.to_string().contains("64 hex"),
            "{e}"
        );
        let e = resolve(raw("database: mysql://x\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("database"), "{e}");
        let e = resolve(raw("stale_after: soon\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("stale_after"), "{e}");
        let e = resolve(raw("max_body_bytes: 10\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
        let e = resolve(raw("max_connections: 0\n"), None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_connections"), "{e}");
        let c = resolve(raw("max_connections: 5\n"), None, Overrides::default()).unwrap();
        assert_eq!(c.max_connections, 5);
    }

    #[test]
    fn tokens_file_merges_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let tf = dir.path().join("tokens.yml");
        std::fs::write(&tf, format!("h2: {HASH}\n")).unwrap();
        let r = raw(&format!(
            "tokens:\n  h1: {HASH}\ntokens_file: {}\n",
            tf.display()
        ));
        let c = resolve(r, None, Overrides::default()).unwrap();
        assert_eq!(c.tokens.len(), 2);
        std::fs::write(&tf, format!("h1: {HASH}\n")).unwrap();
        let r = raw(&format!(
            "tokens:\n  h1: {HASH}\ntokens_file: {}\n",
            tf.display()
        ));
        let e = resolve(r, None, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
    }

    #[test]
    fn exposure_check_refuses_open_non_loopback_listeners() {
        let mut c = resolve(RawConfig::default(), None, Overrides::default()).unwrap();
        let lo: SocketAddr = "127.0.0.1:7443".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7443".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        assert!(check_exposure(&c, &[lo, lo6]).is_ok());
        let e = check_exposure(&c, &[any]).unwrap_err();
        assert!(e.to_string().contains("allow_unauthenticated"), "{e}");
        c.allow_unauthenticated = true;
        assert!(check_exposure(&c, &[any]).is_ok());
        c.allow_unauthenticated = false;
        c.tokens.insert("h".into(), [0; 32]);
        assert!(check_exposure(&c, &[any]).is_ok());
    }
}
