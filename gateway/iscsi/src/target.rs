//! The target registry: which targets exist, their LUNs and their CHAP secrets.
//!
//! The iSCSI layer asks a [`TargetRegistry`] at login time (and for SendTargets); it never keeps
//! its own copy of the configuration, so a registry backed by the metadata service can change
//! targets while the gateway runs. [`InMemoryRegistry`] is the standalone implementation.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::block::BlockDevice;
use crate::error::IscsiError;
use crate::scsi::pr::{InMemoryReservationStore, ReservationStore};

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Authentication required to log in to a target (or to discovery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChapConfig {
    /// Credentials the initiator must prove (one-way CHAP). `None`: no authentication.
    pub initiator: Option<ChapCredentials>,
    /// Credentials the target proves to an initiator that asks (mutual CHAP).
    pub target: Option<ChapCredentials>,
}

/// One target: its IQN, LUNs and authentication.
#[derive(Clone)]
pub struct TargetConfig {
    pub iqn: String,
    pub alias: Option<String>,
    pub luns: BTreeMap<u64, Arc<dyn BlockDevice>>,
    pub chap: ChapConfig,
    /// Initiator IQNs allowed to log in; empty means everyone.
    pub allowed_initiators: Vec<String>,
}

impl TargetConfig {
    pub fn new(iqn: impl Into<String>) -> Self {
        Self {
            iqn: iqn.into(),
            alias: None,
            luns: BTreeMap::new(),
            chap: ChapConfig::default(),
            allowed_initiators: Vec::new(),
        }
    }

    /// Adds (or replaces) LUN `lun`.
    pub fn with_lun(mut self, lun: u64, dev: Arc<dyn BlockDevice>) -> Self {
        self.luns.insert(lun, dev);
        self
    }

    pub fn with_chap(mut self, chap: ChapConfig) -> Self {
        self.chap = chap;
        self
    }

    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|i| i == initiator)
    }
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("iqn", &self.iqn)
            .field("luns", &self.luns.keys().collect::<Vec<_>>())
            .field("chap", &self.chap)
            .finish_non_exhaustive()
    }
}

/// Where the gateway looks targets up. Lookups are async so an implementation can ask a remote
/// service; they are made at login and discovery time only.
#[async_trait]
pub trait TargetRegistry: Send + Sync {
    /// The IQNs of all targets, for SendTargets=All.
    async fn target_names(&self) -> Result<Vec<String>, IscsiError>;
    /// One target's configuration, or `None` if it does not exist.
    async fn lookup(&self, iqn: &str) -> Result<Option<Arc<TargetConfig>>, IscsiError>;
    /// Authentication required for discovery sessions.
    async fn discovery_chap(&self) -> Result<ChapConfig, IscsiError> {
        Ok(ChapConfig::default())
    }
    /// Where persistent reservations of this registry's LUNs are kept.
    fn reservations(&self) -> Arc<dyn ReservationStore>;
}

/// A registry held in memory, changed through its methods.
pub struct InMemoryRegistry {
    targets: RwLock<BTreeMap<String, Arc<TargetConfig>>>,
    discovery: RwLock<ChapConfig>,
    reservations: Arc<dyn ReservationStore>,
}

impl Default for InMemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRegistry {
    pub fn new() -> Self {
        Self {
            targets: RwLock::new(BTreeMap::new()),
            discovery: RwLock::new(ChapConfig::default()),
            reservations: Arc::new(InMemoryReservationStore::default()),
        }
    }

    /// Adds or replaces a target.
    pub fn add_target(&self, target: TargetConfig) {
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.iqn.clone(), Arc::new(target));
    }

    pub fn remove_target(&self, iqn: &str) -> bool {
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(iqn)
            .is_some()
    }

    pub fn set_discovery_chap(&self, chap: ChapConfig) {
        *self.discovery.write().unwrap_or_else(|e| e.into_inner()) = chap;
    }
}

#[async_trait]
impl TargetRegistry for InMemoryRegistry {
    async fn target_names(&self) -> Result<Vec<String>, IscsiError> {
        Ok(self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }
    async fn lookup(&self, iqn: &str) -> Result<Option<Arc<TargetConfig>>, IscsiError> {
        Ok(self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(iqn)
            .cloned())
    }
    async fn discovery_chap(&self) -> Result<ChapConfig, IscsiError> {
        Ok(self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }
    fn reservations(&self) -> Arc<dyn ReservationStore> {
        Arc::clone(&self.reservations)
    }
}
