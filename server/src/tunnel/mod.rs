//! The server end of the tunnel (local agents; the wire format is in `delegate_agent::protocol`): the WebSocket endpoint
//! `/api/tunnel/{sandbox_id}` (tunnel token in `Authorization`), one link per local sandbox (a
//! newer connection replaces an older one), and for each live link a loopback HTTP listener whose
//! connections are carried as streams to the agent's `opencode serve`. The orchestrator gets that
//! listener's URL as the sandbox's endpoint, so runs and the browser gateway reach a local
//! sandbox exactly like a warm one. The frames and the multiplexer are `delegate_agent`'s.

mod guard;
mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use delegate_agent::mux::Mux;

use crate::orchestrator::Orchestrator;

/// The live links of this process; cheap to clone.
#[derive(Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

struct Inner {
    orch: Orchestrator,
    links: Mutex<HashMap<String, (u64, Mux)>>,
    generation: AtomicU64,
}

impl Tunnels {
    /// No links yet; agents connect later through the tunnel endpoint.
    pub fn new(orch: Orchestrator) -> Tunnels {
        Tunnels {
            inner: Arc::new(Inner {
                orch,
                links: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(1),
            }),
        }
    }

    /// Makes `mux` the link of `sandbox_id`, closing an older one; returns its generation.
    fn install(&self, sandbox_id: &str, mux: Mux) -> u64 {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let old = lock(&self.inner.links).insert(sandbox_id.to_string(), (generation, mux));
        if let Some((_, old)) = old {
            old.close(
                "replaced",
                "a newer connection of this sandbox's agent took over",
            );
        }
        generation
    }

    /// Forgets the link of `generation` (a newer one stays).
    fn remove(&self, sandbox_id: &str, generation: u64) {
        let mut links = lock(&self.inner.links);
        if links.get(sandbox_id).is_some_and(|(g, _)| *g == generation) {
            links.remove(sandbox_id);
        }
    }

    /// Whether a local sandbox's agent is connected to this process.
    pub fn is_connected(&self, sandbox_id: &str) -> bool {
        lock(&self.inner.links)
            .get(sandbox_id)
            .is_some_and(|(_, m)| !m.is_closed())
    }

    /// The tunnel endpoint's route.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/tunnel/{sandbox_id}", get(link::upgrade))
            .with_state(self.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes: a panic cannot leave the map half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
