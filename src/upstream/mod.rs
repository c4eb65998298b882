//! Upstream servers: pools, their sources, selection and live health.

pub mod checker;
pub mod consul;
pub mod dump;
pub mod file_source;
pub mod health;
pub mod in_flight;
pub mod kv_value;
pub mod pool;
pub mod probe;
pub mod resolve;
pub mod server;
pub mod spec;
pub mod upsync_comment;
pub mod upsync_format;

use std::collections::BTreeMap;
use std::sync::Arc;

use health::HealthTable;
use pool::Pool;

/// All configured pools, by name.
#[derive(Debug)]
pub struct Pools {
    pools: BTreeMap<String, Arc<Pool>>,
    pub health: Arc<HealthTable>,
}

impl Pools {
    pub fn new<'a>(defs: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let health = Arc::new(HealthTable::default());
        let pools = defs
            .into_iter()
            .map(|(name, allow_empty)| {
                (
                    name.to_string(),
                    Arc::new(Pool::new(name, allow_empty, health.clone())),
                )
            })
            .collect();
        Self { pools, health }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }
}
