//! Single-flight for blocks: the first request that misses a block claims it and fetches
//! it; every request for the same block that arrives while that fetch is under way joins it
//! and gets the same bytes (or the same error), so any number of nodes asking for a block
//! cause one upstream fetch. A claim is planned together with the cache check (under one
//! lock) and released only after the block is stored, so a block is never fetched twice
//! because a request looked between the two.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

/// A block's bytes (or why there are none), shared by everyone waiting for it.
pub type Pending<E> = Shared<BoxFuture<'static, Result<Bytes, E>>>;

/// What to do for one block.
pub enum Plan<K: Eq + Hash + Clone, E: Clone> {
    /// It is cached: read it from the cache.
    Cached,
    /// Someone is fetching it: wait for that.
    Join(Pending<E>),
    /// Fetch it: this caller claimed it and must complete the claim.
    Fetch(Claim<K, E>, Pending<E>),
}

/// The duty to fetch one block; dropping it without [`Claim::complete`] fails the waiters
/// with the table's "abandoned" error.
pub struct Claim<K: Eq + Hash + Clone, E> {
    key: K,
    tx: Option<tokio::sync::oneshot::Sender<Result<Bytes, E>>>,
    table: Arc<Flights<K, E>>,
}

impl<K: Eq + Hash + Clone, E> Claim<K, E> {
    /// The block claimed.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Hands the result to every waiter, those waiting now and those that join until the
    /// claim is released (dropped: after the block is stored, so a request never finds it
    /// neither in flight nor cached).
    pub fn publish(&mut self, result: Result<Bytes, E>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }

    /// [`Self::publish`] and release (the next miss claims again: a failed fetch is not
    /// remembered).
    pub fn complete(mut self, result: Result<Bytes, E>) {
        self.publish(result);
    }
}

impl<K: Eq + Hash + Clone, E> Drop for Claim<K, E> {
    fn drop(&mut self) {
        // Unpublished, the sender drops with us and the waiters see "abandoned".
        self.table.map.lock().remove(&self.key);
    }
}

/// The blocks being fetched now.
pub struct Flights<K, E> {
    map: Mutex<HashMap<K, Pending<E>>>,
    abandoned: fn() -> E,
}

impl<K, E> Flights<K, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty table; `abandoned` is the error waiters get when a claim is dropped.
    pub fn new(abandoned: fn() -> E) -> Arc<Self> {
        Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
            abandoned,
        })
    }

    /// Blocks being fetched now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.map.lock().len()
    }

    /// Plans each of `keys`: joined if in flight, cached if `cached` says so, else claimed.
    pub fn plan(self: &Arc<Self>, keys: Vec<K>, cached: impl Fn(&K) -> bool) -> Vec<Plan<K, E>> {
        let mut map = self.map.lock();
        keys.into_iter()
            .map(|key| {
                if let Some(p) = map.get(&key) {
                    return Plan::Join(p.clone());
                }
                if cached(&key) {
                    return Plan::Cached;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let abandoned = self.abandoned;
                let pending: Pending<E> = rx
                    .map(move |r| r.unwrap_or_else(|_| Err(abandoned())))
                    .boxed()
                    .shared();
                map.insert(key.clone(), pending.clone());
                Plan::Fetch(
                    Claim {
                        key,
                        tx: Some(tx),
                        table: self.clone(),
                    },
                    pending,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Arc<Flights<u64, String>>;

    fn table() -> Table {
        Flights::new(|| "abandoned".to_string())
    }

    fn claim(p: Plan<u64, String>) -> (Claim<u64, String>, Pending<String>) {
        match p {
            Plan::Fetch(c, p) => (c, p),
            _ => panic!("expected a claim"),
        }
    }

    #[tokio::test]
    async fn concurrent_requests_for_a_block_share_one_fetch() {
        let t = table();
        let mut first = t.plan(vec![1, 2], |_| false);
        let (c2, p2) = claim(first.pop().unwrap());
        let (c1, p1) = claim(first.pop().unwrap());
        // ten more requests for block 1 join; block 3 is cached
        let joins: Vec<_> = (0..10)
            .map(|_| match t.plan(vec![1, 3], |k| *k == 3).remove(0) {
                Plan::Join(p) => p,
                _ => panic!("expected a join"),
            })
            .collect();
        assert!(matches!(t.plan(vec![3], |k| *k == 3)[0], Plan::Cached));
        assert_eq!(t.in_flight(), 2);
        c1.complete(Ok(Bytes::from_static(b"one")));
        for j in joins {
            assert_eq!(&j.await.unwrap()[..], b"one");
        }
        assert_eq!(&p1.await.unwrap()[..], b"one");
        assert_eq!(t.in_flight(), 1);
        c2.complete(Err("upstream 500".into()));
        assert_eq!(p2.await.unwrap_err(), "upstream 500");
        // a failure is not remembered: the next request claims again
        assert!(matches!(t.plan(vec![2], |_| false)[0], Plan::Fetch(..)));
    }

    #[tokio::test]
    async fn a_published_block_is_joined_until_the_claim_is_released() {
        let t = table();
        let (mut c, p) = claim(t.plan(vec![4], |_| false).remove(0));
        c.publish(Ok(Bytes::from_static(b"four")));
        assert_eq!(&p.await.unwrap()[..], b"four");
        // being stored: a late request still joins (and gets the bytes at once)
        match t.plan(vec![4], |_| false).remove(0) {
            Plan::Join(j) => assert_eq!(&j.await.unwrap()[..], b"four"),
            _ => panic!("expected a join"),
        }
        drop(c);
        assert_eq!(t.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_claim_fails_its_waiters_and_frees_the_block() {
        let t = table();
        let (c, p) = claim(t.plan(vec![7], |_| false).remove(0));
        let j = match t.plan(vec![7], |_| false).remove(0) {
            Plan::Join(p) => p,
            _ => panic!("expected a join"),
        };
        drop(c);
        assert_eq!(p.await.unwrap_err(), "abandoned");
        assert_eq!(j.await.unwrap_err(), "abandoned");
        assert_eq!(t.in_flight(), 0);
    }
}
