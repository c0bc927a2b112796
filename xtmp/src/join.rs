//! Joining a connection's futures (reader, writer) in one task without waking the task
//! when one of them wakes the other.
//!
//! `tokio::join!` gives the joined futures the task's own waker. When the reader queues a
//! reply and notifies the writer, that wakes the task *while it is running*: tokio then
//! reschedules it behind the other tasks of the worker and unparks another worker to
//! steal it — a futex or eventfd wake, and often a move to the other thread, per message.
//! Here the futures get a waker of their own: a wake-up that arrives while the task is
//! polling them only marks that another round is needed, and the poll loop runs it before
//! returning. Wake-ups from outside (I/O, timers, other tasks) wake the task as usual.
//! No per-future allocation: the futures stay pinned inside the calling future (as with
//! `tokio::join!`); the shared waker state is one small allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Rounds of polling inside one poll of the task before it yields (futures that keep
/// waking each other cannot monopolise the worker; tokio's cooperative budget still
/// applies to each future's I/O).
const MAX_ROUNDS: usize = 16;

struct Shared {
    /// The futures are being polled: a wake-up only sets `woken`.
    polling: AtomicBool,
    /// Woken since the current round started.
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// A joined future, pinned where the caller keeps it.
pub(crate) type JoinFut<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>;

/// Runs `futs` to completion concurrently in the current task (see the module docs).
/// The caller pins the futures in its own state (`std::pin::pin!`) — passing them by
/// value into an `async fn` would make its future hold them twice.
pub(crate) async fn join_pinned(futs: &mut [Option<JoinFut<'_>>]) {
    let shared = Arc::new(Shared {
        polling: AtomicBool::new(false),
        woken: AtomicBool::new(false),
        task: AtomicWaker::new(),
    });
    let waker = Waker::from(shared.clone());
    std::future::poll_fn(move |cx| {
        shared.task.register(cx.waker());
        let mut sub_cx = Context::from_waker(&waker);
        for _ in 0..MAX_ROUNDS {
            shared.polling.store(true, Ordering::SeqCst);
            // A wake-up before a future is polled below is seen by that poll.
            shared.woken.store(false, Ordering::SeqCst);
            for slot in futs.iter_mut() {
                if let Some(f) = slot {
                    if f.as_mut().poll(&mut sub_cx).is_ready() {
                        *slot = None;
                    }
                }
            }
            shared.polling.store(false, Ordering::SeqCst);
            if futs.iter().all(Option::is_none) {
                return Poll::Ready(());
            }
            // Woken while polling (by a sibling, or by another thread that saw `polling`
            // set): another round. A wake-up after `polling` was cleared woke the task.
            if !shared.woken.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        // Still busy: yield to the other tasks, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn siblings_and_outside_wakeups_are_delivered() {
        let ping = Arc::new(Notify::new());
        let pong = Arc::new(Notify::new());
        let n = Arc::new(AtomicUsize::new(0));
        let (p1, q1, n1) = (ping.clone(), pong.clone(), n.clone());
        let a = async move {
            for _ in 0..1000 {
                p1.notify_one();
                q1.notified().await;
                n1.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (p2, q2) = (ping.clone(), pong.clone());
        let b = async move {
            for _ in 0..1000 {
                p2.notified().await;
                q2.notify_one();
            }
        };
        // A wake-up from another task while the others wait.
        let outside = Arc::new(Notify::new());
        let o2 = outside.clone();
        let c = async move {
            o2.notified().await;
        };
        let h = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            outside.notify_one();
        });
        let (a, b, c) = (pin!(a), pin!(b), pin!(c));
        let mut futs: [Option<JoinFut<'_>>; 3] = [Some(a), Some(b), Some(c)];
        tokio::time::timeout(std::time::Duration::from_secs(10), join_pinned(&mut futs))
            .await
            .unwrap();
        h.await.unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 1000);
        // Two futures, one finishing first.
        let done = Arc::new(AtomicUsize::new(0));
        let (d1, d2) = (done.clone(), done.clone());
        let a = pin!(async move {
            d1.fetch_add(1, Ordering::Relaxed);
        });
        let b = pin!(async move {
            tokio::task::yield_now().await;
            d2.fetch_add(1, Ordering::Relaxed);
        });
        join_pinned(&mut [Some(a as JoinFut<'_>), Some(b)]).await;
        assert_eq!(done.load(Ordering::Relaxed), 2);
    }
}
