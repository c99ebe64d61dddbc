//! Named job queues with worker limits (`queue_config.workers`).
//!
//! Each queue is a semaphore with as many permits as it has workers; a job
//! holds a permit while it runs. A reload that changes a limit resizes the
//! queue in place: more workers start at once, fewer take effect as
//! running jobs finish (never more than the new limit start after that).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::QueueSpec;
use crate::util::lock;

/// One queue.
#[derive(Debug)]
struct Queue {
    sem: Arc<Semaphore>,
    /// The configured number of workers.
    workers: usize,
}

/// The job queues by name.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    inner: Arc<Mutex<BTreeMap<String, Queue>>>,
    spec: Arc<Mutex<Option<QueueSpec>>>,
}

/// A worker slot of a queue; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Queues {
    /// Queues sized from `spec` (queues are created on first use).
    pub fn new(spec: &QueueSpec) -> Queues {
        let q = Queues::default();
        q.configure(spec);
        q
    }

    /// Apply a (reloaded) configuration: every existing queue is resized to
    /// its new limit.
    pub fn configure(&self, spec: &QueueSpec) {
        let mut queues = lock(&self.inner);
        for (name, q) in queues.iter_mut() {
            resize(q, spec.workers(name));
        }
        *lock(&self.spec) = Some(spec.clone());
    }

    fn queue(&self, name: &str) -> Arc<Semaphore> {
        let workers = lock(&self.spec)
            .as_ref()
            .map(|s| s.workers(name))
            .unwrap_or(1)
            .max(1);
        let mut queues = lock(&self.inner);
        queues
            .entry(name.to_string())
            .or_insert_with(|| Queue {
                sem: Arc::new(Semaphore::new(workers)),
                workers,
            })
            .sem
            .clone()
    }

    /// Wait for a free worker of queue `name`.
    pub async fn acquire(&self, name: &str) -> Slot {
        let sem = self.queue(name);
        match sem.acquire_owned().await {
            Ok(permit) => Slot { _permit: permit },
            // The semaphore is never closed.
            Err(_) => unreachable!("job queue semaphores are never closed"),
        }
    }

    /// The configured number of workers of a queue.
    pub fn workers(&self, name: &str) -> usize {
        lock(&self.spec)
            .as_ref()
            .map(|s| s.workers(name))
            .unwrap_or(1)
    }
}

fn resize(q: &mut Queue, workers: usize) {
    let workers = workers.max(1);
    if workers > q.workers {
        q.sem.add_permits(workers - q.workers);
    } else if workers < q.workers {
        // Take the extra permits out as jobs release them.
        let sem = q.sem.clone();
        let n = u32::try_from(q.workers - workers).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(p) = sem.acquire_many_owned(n).await {
                p.forget();
            }
        });
    }
    q.workers = workers;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn spec(pairs: &[(&str, usize)]) -> QueueSpec {
        QueueSpec {
            workers: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    async fn max_concurrency(queues: &Queues, name: &'static str, jobs: usize) -> usize {
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..jobs {
            let (q, running, max) = (queues.clone(), running.clone(), max.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = q.acquire(name).await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        max.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn queue_runs_at_most_its_workers() {
        let q = Queues::new(&spec(&[("backup", 3)]));
        assert_eq!(max_concurrency(&q, "backup", 10).await, 3);
        // Defaults: 2 for backup, 1 for anything else.
        let q = Queues::new(&spec(&[]));
        assert_eq!(max_concurrency(&q, "backup", 5).await, 2);
        assert_eq!(max_concurrency(&q, "restore", 5).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reload_resizes_queues() {
        let q = Queues::new(&spec(&[("backup", 1)]));
        assert_eq!(max_concurrency(&q, "backup", 4).await, 1);
        q.configure(&spec(&[("backup", 4)]));
        assert_eq!(max_concurrency(&q, "backup", 8).await, 4);
        q.configure(&spec(&[("backup", 2)]));
        tokio::task::yield_now().await;
        assert_eq!(max_concurrency(&q, "backup", 8).await, 2);
        assert_eq!(q.workers("backup"), 2);
    }
}
