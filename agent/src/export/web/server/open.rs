//! The open connections by age and by client: which one to close when a
//! cap is reached (the rule: the accept loop's module documentation).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, Weak},
};

use super::phase::Phase;
use crate::{export::channel::Dropped, locks::lock};

/// Who a connection's limit is counted against: an IPv4 address, or the
/// /64 of an IPv6 one (a host is given a /64, not an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    V6(u64),
}

impl Client {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The open connections by age (to find which to close at a cap), and how
/// many each client has.
#[derive(Default)]
pub(super) struct Open(pub(super) Mutex<Connections>);

#[derive(Default)]
pub(super) struct Connections {
    next: u64,
    by_age: BTreeMap<u64, (Weak<Phase>, Client)>,
    pub(super) by_client: HashMap<Client, u32>,
}

impl Connections {
    pub(super) fn remove(&mut self, id: u64) {
        if let Some((_, client)) = self.by_age.remove(&id)
            && let Some(n) = self.by_client.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&client);
            }
        }
    }
}

/// A connection's place in [`Open`], left when dropped.
pub(super) struct Listed {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.open.0).remove(self.id);
    }
}

impl Open {
    pub(super) fn insert(self: &Arc<Self>, phase: &Arc<Phase>, client: Client) -> Listed {
        let mut inner = lock(&self.0);
        let id = inner.next;
        inner.next += 1;
        inner.by_age.insert(id, (Arc::downgrade(phase), client));
        *inner.by_client.entry(client).or_default() += 1;
        Listed {
            open: self.clone(),
            id,
        }
    }

    /// Open connections of `client`.
    pub(super) fn count(&self, client: Client) -> u32 {
        lock(&self.0).by_client.get(&client).copied().unwrap_or(0)
    }

    /// Closes the oldest connection (of `client` only, if given) still
    /// waiting for its request's headers or, failing that, the oldest idle
    /// kept-alive one; false when every such connection is busy answering.
    pub(super) fn make_room(&self, client: Option<Client>) -> bool {
        let mut inner = lock(&self.0);
        for idle in [false, true] {
            let oldest = inner.by_age.iter().find_map(|(id, (phase, of))| {
                if client.is_some_and(|c| c != *of) {
                    return None;
                }
                let phase = phase.upgrade()?;
                let why = match client {
                    Some(_) => Dropped::MaxConnectionsPerClient,
                    None => Dropped::MaxConnections,
                };
                phase.close_to_make_room(idle, why).then_some(*id)
            });
            if let Some(id) = oldest {
                inner.remove(id);
                return true;
            }
        }
        false
    }
}
