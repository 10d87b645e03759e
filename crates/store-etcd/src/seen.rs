//! [`Seen`]: what one transaction read or wrote of the networks and endpoints, with
//! etcd's revisions, so a host can keep a local copy of them that is never older
//! than what it last saw ([`EtcdStore::observing`](crate::EtcdStore::observing)).
//! Collected only when asked for: the store's own work does not need it.

/// The networks and endpoints one committed (or read-only) transaction saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The revision every read was taken at (0: nothing was read).
    pub snapshot: i64,
    /// Every network was listed: one absent from `networks` was gone at `snapshot`.
    pub all_networks: bool,
    /// Every endpoint was listed: one absent from `endpoints` was gone at `snapshot`.
    pub all_endpoints: bool,
    /// Networks read (at their `mod_revision`) or written (at the commit's revision).
    pub networks: Vec<Record>,
    /// Endpoints read or written, the same way.
    pub endpoints: Vec<Record>,
}

/// One record as a transaction saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The network's or endpoint's id.
    pub id: String,
    /// The etcd revision it was last changed at (for a deletion: the deleting commit's).
    pub revision: i64,
    /// Its JSON; `None`: deleted.
    pub json: Option<String>,
}

impl Seen {
    /// Whether it says nothing about networks or endpoints.
    pub fn is_empty(&self) -> bool {
        !self.all_networks
            && !self.all_endpoints
            && self.networks.is_empty()
            && self.endpoints.is_empty()
    }
}
