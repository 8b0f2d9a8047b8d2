//! Wait for whichever of two futures finishes first (the other is dropped), or for both.
//!
//! Used where a timed wait must also end early on an event (a job's rate-limit sleep ends when the
//! job is cancelled, paused or resumed). Polls `a` first, so the outcome is deterministic when
//! both are ready.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Which future finished.
#[derive(Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

/// Run both; return the first result.
pub async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        if let Poll::Ready(v) = Pin::new(&mut a).poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = Pin::new(&mut b).poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

/// Run both concurrently; both results once both have finished. Polls `a` first, so the order
/// of their side effects is deterministic.
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        if ra.is_none()
            && let Poll::Ready(v) = Pin::new(&mut a).poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = Pin::new(&mut b).poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            return Poll::Ready((ra.take().unwrap(), rb.take().unwrap()));
        }
        Poll::Pending
    })
    .await
}
