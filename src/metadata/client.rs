//! The host side of the index: what the agent and the commands (`backup`,
//! `query`, `restore`, ...) use to reach it. [`Stores`] picks, from the
//! host's configuration, the metadata server ([`remote`], the HTTP client)
//! behind its durable outbox ([`outbox`]), or the embedded SQLite store in
//! `work_dir` when no `metadb` is configured. Nothing here is used by the
//! metadata server (`tabacco metadb`).

pub mod outbox;
pub mod remote;

use std::sync::Arc;

use self::outbox::OutboxStore;
use super::sqlite::SqliteStore;
use super::{MetadataError, MetadataStore};

/// The stores a host's processes (the agent, the commands) use, as its
/// configuration asks: the metadata server through the durable outbox when
/// `metadb` is configured, else the embedded SQLite store in `work_dir`.
pub struct Stores {
    /// What backups record into and queries search.
    pub store: Arc<dyn MetadataStore>,
    /// The outbox store when `metadb` is configured (the same object as
    /// `store`), for delivery and its counters.
    pub outbox: Option<Arc<OutboxStore>>,
}

impl Stores {
    /// Open them. A `metadb` block that cannot be used (bad URL, unreadable
    /// token or certificate) is a [`MetadataError::Config`] naming the
    /// configuration file.
    pub async fn open(config: &crate::config::Config) -> Result<Stores, MetadataError> {
        let remote = OutboxStore::from_config(config)
            .map_err(|e| MetadataError::Config(format!("{}: {e}", config.path.display())))?;
        if let Some(outbox) = remote {
            let outbox = Arc::new(outbox);
            return Ok(Stores {
                store: outbox.clone(),
                outbox: Some(outbox),
            });
        }
        let store = SqliteStore::open(&config.embedded_metadb_path()).await?;
        Ok(Stores {
            store: Arc::new(store),
            outbox: None,
        })
    }
}
