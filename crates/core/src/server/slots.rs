//! Session caps: per listener, per client address, and gateway-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ListenOptions;

/// The gateway-wide cap on sessions, shared by every listener.
#[derive(Debug)]
pub struct SessionBudget {
    running: AtomicUsize,
    max: AtomicUsize,
}

impl SessionBudget {
    /// A budget of `max` sessions at once across all routes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            running: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// A reload changed `limits.total_sessions`: sessions already running
    /// are never cut; new ones count against the new cap.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    fn take(&self) -> bool {
        let prev = self.running.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max.load(Ordering::Acquire) {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts running sessions of one listener, in total and per client address.
#[derive(Debug)]
pub(super) struct Sessions {
    pub(super) by_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    pub(super) budget: Arc<SessionBudget>,
}

/// One admitted session; dropping it frees its places.
pub(super) struct SessionSlot {
    sessions: Arc<Sessions>,
    ip: std::net::IpAddr,
}

impl Sessions {
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        o: &ListenOptions,
    ) -> Option<SessionSlot> {
        let ip = ip.to_canonical();
        let mut map = self.by_client.lock().ok()?;
        let total: usize = map.values().sum();
        let mine = map.get(&ip).copied().unwrap_or(0);
        if total >= o.max_sessions || mine >= o.max_per_client || !self.budget.take() {
            return None;
        }
        *map.entry(ip).or_insert(0) += 1;
        Some(SessionSlot {
            sessions: self.clone(),
            ip,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.sessions.budget.give_back();
        if let Ok(mut map) = self.sessions.by_client.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}
