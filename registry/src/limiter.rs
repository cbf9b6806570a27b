//! Bounds the HTTP requests in flight per registry host, handing free slots to on-demand reads
//! before prefetch and background fetches.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Who is waiting for bytes; lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A read an application is blocked on.
    OnDemand = 0,
    /// Prefetch of a layer's prioritized files.
    Prefetch = 1,
    /// Background fetch of the rest of a layer.
    Background = 2,
}

/// A counting semaphore with three priority queues.
pub(crate) struct Limiter {
    state: Mutex<State>,
}

struct State {
    available: usize,
    waiters: [VecDeque<oneshot::Sender<()>>; 3],
}

impl Limiter {
    pub(crate) fn new(slots: usize) -> Arc<Self> {
        Arc::new(Limiter {
            state: Mutex::new(State {
                available: slots.max(1),
                waiters: Default::default(),
            }),
        })
    }

    /// Waits for a slot; queued by priority, FIFO within a priority.
    pub(crate) async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let rx = {
            let mut st = self.state.lock();
            if st.available > 0 {
                st.available -= 1;
                return Permit {
                    limiter: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            st.waiters[priority as usize].push_back(tx);
            rx
        };
        let mut waiter = Waiter {
            rx: Some(rx),
            limiter: self.clone(),
        };
        let rx = waiter.rx.as_mut().expect("set above");
        // The sender is only dropped after sending or when the limiter is gone with us.
        let _ = rx.await;
        waiter.rx = None;
        Permit {
            limiter: Some(self.clone()),
        }
    }

    fn release(&self) {
        let mut st = self.state.lock();
        for q in 0..3 {
            while let Some(tx) = st.waiters[q].pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        st.available += 1;
    }
}

/// A waiter cancelled after being handed a slot passes the slot on.
struct Waiter {
    rx: Option<oneshot::Receiver<()>>,
    limiter: Arc<Limiter>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.limiter.release();
            }
        }
    }
}

/// One request slot; released on drop.
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = self.limiter.take() {
            l.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn on_demand_waiters_go_first() {
        let l = Limiter::new(1);
        let first = l.acquire(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [Priority::Background, Priority::Prefetch, Priority::OnDemand] {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = l.acquire(p).await;
                order.lock().push(p);
            }));
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock(),
            vec![Priority::OnDemand, Priority::Prefetch, Priority::Background]
        );
    }

    #[tokio::test]
    async fn cancelled_waiters_do_not_leak_slots() {
        let l = Limiter::new(1);
        let held = l.acquire(Priority::OnDemand).await;
        let waiting = tokio::spawn({
            let l = l.clone();
            async move {
                let _p = l.acquire(Priority::OnDemand).await;
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        // The only slot must be free again.
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            l.acquire(Priority::Background),
        )
        .await;
        assert!(again.is_ok());
    }
}
