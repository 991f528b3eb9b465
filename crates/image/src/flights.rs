//! Single-flight: one async lock per key (a digest), so concurrent pulls of the same content
//! do the work once and the others find it done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while doing the work for one key; the map entry goes when the last holder is done.
pub(crate) struct Flight {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Flights {
    pub(crate) async fn lock(&self, key: &str) -> Flight {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        Flight { guard: Some(guard), key: key.to_string(), map: self.map.clone() }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.guard.take();
        // Only the map holds it now: nobody waits for this key.
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_worker_per_key() {
        let flights = Arc::new(Flights::default());
        let done = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flights, done, work) = (flights.clone(), done.clone(), work.clone());
            tasks.push(tokio::spawn(async move {
                let _f = flights.lock("sha256:x").await;
                if done.load(Ordering::SeqCst) == 0 {
                    work.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    done.store(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(work.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }
}
