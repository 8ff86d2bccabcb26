//! The one-shot way a waiting command's end reaches its caller, without an allocation per
//! command: a mailbox (the end, or "closed", and the caller's waker behind one lock) taken
//! from a small per-thread pool when the command starts waiting, and given back by the
//! caller that read it when nobody else holds it any more.

use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use parking_lot::Mutex;

/// How many idle mailboxes a thread keeps for reuse.
const POOL: usize = 64;

thread_local! {
    static IDLE: RefCell<Vec<Arc<Mailbox<crate::manager::Ended>>>> = const { RefCell::new(Vec::new()) };
}

/// One value, handed over once.
pub(crate) struct Mailbox<T>(Mutex<State<T>>);

struct State<T> {
    value: Option<T>,
    /// The sender sent or was dropped.
    closed: bool,
    waker: Option<Waker>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self(Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }))
    }
}

/// The sending half, kept by the pending entry. Dropping it unsent closes the mailbox, and
/// the receiver learns that no value will come.
pub(crate) struct Sender<T>(Option<Arc<Mailbox<T>>>);

/// The receiving half, kept by the caller.
pub(crate) struct Receiver<T>(Arc<Mailbox<T>>);

impl<T> Sender<T> {
    /// Hands `value` over and wakes the receiver.
    pub(crate) fn send(mut self, value: T) {
        if let Some(mailbox) = self.0.take() {
            mailbox.close(Some(value));
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(mailbox) = self.0.take() {
            mailbox.close(None);
        }
    }
}

impl<T> Mailbox<T> {
    fn close(&self, value: Option<T>) {
        let waker = {
            let mut state = self.0.lock();
            if value.is_some() {
                state.value = value;
            }
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Receiver<crate::manager::Ended> {
    /// The value, or `None` when the sender was dropped unsent. The mailbox goes back to
    /// this thread's pool when the sender is gone.
    pub(crate) async fn recv(self) -> Option<crate::manager::Ended> {
        let value = poll_fn(|cx| {
            let mut state = (self.0).0.lock();
            if state.closed {
                return Poll::Ready(state.value.take());
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        self.recycle();
        value
    }

    /// Puts the mailbox back in the pool, emptied, if this is its last holder.
    fn recycle(self) {
        let mut mailbox = self.0;
        let Some(reset) = Arc::get_mut(&mut mailbox) else {
            return;
        };
        let state = reset.0.get_mut();
        state.value = None;
        state.closed = false;
        state.waker = None;
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.len() < POOL {
                idle.push(mailbox);
            }
        });
    }
}

/// A mailbox for one command's end: an idle one of this thread's pool, or a new one.
pub(crate) fn channel() -> (
    Sender<crate::manager::Ended>,
    Receiver<crate::manager::Ended>,
) {
    let mailbox = IDLE
        .with(|idle| idle.borrow_mut().pop())
        .unwrap_or_default();
    (Sender(Some(Arc::clone(&mailbox))), Receiver(mailbox))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bridge_protocol::HexPayload;

    use super::{IDLE, channel};
    use crate::CommandError;

    fn idle() -> usize {
        IDLE.with(|idle| idle.borrow().len())
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn a_value_sent_before_or_after_the_wait_arrives_once_and_the_mailbox_is_reused() {
        block_on(async {
            let before = idle();
            let (sender, receiver) = channel();
            sender.send((Ok(HexPayload::from_bytes(vec![1])), None));
            let got = receiver.recv().await;
            assert_eq!(
                got.map(|(r, _)| r),
                Some(Ok(HexPayload::from_bytes(vec![1])))
            );
            assert_eq!(
                idle(),
                before + 1,
                "the emptied mailbox went back to the pool"
            );

            // The reused mailbox starts empty: a second command never sees the first's end.
            let (sender, receiver) = channel();
            assert_eq!(idle(), before, "taken from the pool");
            let waiting = tokio::spawn(receiver.recv());
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "nothing was sent yet");
            sender.send((Err(CommandError::Timeout), None));
            let got = waiting.await.expect("the waiter ends");
            assert_eq!(got.map(|(r, _)| r), Some(Err(CommandError::Timeout)));
        });
    }

    #[test]
    fn a_dropped_sender_ends_the_wait_with_nothing_and_a_dropped_receiver_leaks_nothing() {
        block_on(async {
            let (sender, receiver) = channel();
            let waiting = tokio::spawn(receiver.recv());
            tokio::task::yield_now().await;
            drop(sender);
            assert!(waiting.await.expect("the waiter ends").is_none());

            let (sender, receiver) = channel();
            let held = Arc::clone(&receiver.0);
            drop(receiver);
            sender.send((Err(CommandError::Shutdown), None));
            assert_eq!(Arc::strong_count(&held), 1, "only this test holds it now");
        });
    }
}
