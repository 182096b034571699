//! Admission: a request is handled only while the gateway has a slot for it
//! and memory for its body (see [`crate::capacity`]); otherwise it is shed at
//! once with 503 and `Retry-After`, before it costs anything. Both checks are
//! a semaphore's `try_acquire`: no queue, no lock, no allocation.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::capacity::{BODY_COST, Capacity};

/// Why a request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// Every in-flight slot is taken.
    #[error("the gateway is at its limit of {0} requests in flight; try again shortly")]
    InFlight(usize),
    /// Every connection slot is taken (the request came on a connection accepted past the cap).
    #[error("the gateway is at its limit of {0} open connections; try again shortly")]
    Connections(usize),
    /// The request bodies being handled already use the memory set aside for them.
    #[error("the gateway is holding as many request bodies as its memory allows ({} MiB); try again shortly", .0 / 1024)]
    BodyMemory(usize),
}

impl Shed {
    /// The `reason` label of `tenantgate_requests_shed_total`.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::InFlight(_) => "in_flight",
            Self::Connections(_) => "connections",
            Self::BodyMemory(_) => "body_memory",
        }
    }
}

/// The in-flight slots and the body memory budget, shared by every request.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    /// In KiB, so that one charge always fits the semaphore's `u32`.
    bodies: Option<(Arc<Semaphore>, u32)>,
}

/// What an admitted request holds until its response headers are sent.
#[derive(Debug)]
pub struct Ticket {
    _slot: OwnedSemaphorePermit,
    _body: Option<BodyCharge>,
}

/// The body memory a request holds (until it drops).
#[derive(Debug)]
#[expect(dead_code, reason = "the permits are held for their drop, never read")]
enum BodyCharge {
    /// Taken up front for a declared `Content-Length` (no allocation).
    Declared(OwnedSemaphorePermit),
    /// Taken frame by frame as a body of undeclared length arrives.
    Streamed(Held),
}

/// What a [`BudgetedBody`] has taken so far, shared with its request's ticket.
type Held = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

impl Admission {
    /// The budgets of `capacity`.
    pub fn new(capacity: &Capacity) -> Self {
        let bodies = capacity.body_budget.map(|bytes| {
            let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
            (Arc::new(Semaphore::new(kib as usize)), kib)
        });
        Self {
            slots: Arc::new(Semaphore::new(capacity.max_in_flight.max(1))),
            max_in_flight: capacity.max_in_flight,
            bodies,
        }
    }

    /// Admits `request`, or says why not (and hands its body back, to be
    /// drained). A body of undeclared length is charged as it arrives; running
    /// out then fails the body read with [`Shed::BodyMemory`] (see [`shed_of`]).
    pub fn admit(&self, request: Request) -> Result<(Request, Ticket), (Shed, Body)> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err((Shed::InFlight(self.max_in_flight), request.into_body()));
        };
        let Some((budget, total)) = &self.bodies else {
            return Ok((request, Ticket { _slot: slot, _body: None }));
        };
        let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let (request, charge) = match declared {
            Some(bytes) => {
                let Ok(permit) = budget.clone().try_acquire_many_owned(cost_kib(bytes, *total)) else {
                    return Err((Shed::BodyMemory(*total as usize), request.into_body()));
                };
                (request, BodyCharge::Declared(permit))
            }
            None => {
                let held = Held::default();
                let (budget, total, shared) = (budget.clone(), *total, held.clone());
                let request = request.map(|inner| {
                    Body::new(BudgetedBody {
                        inner,
                        budget,
                        total,
                        held: shared,
                        received: 0,
                        charged: 0,
                        refused: false,
                    })
                });
                (request, BodyCharge::Streamed(held))
            }
        };
        Ok((request, Ticket { _slot: slot, _body: Some(charge) }))
    }
}

/// KiB of the budget `bytes` of body cost, at most the whole budget (a body
/// that alone costs more passes when no other body is held, not never).
fn cost_kib(bytes: u64, total: u32) -> u32 {
    let kib = bytes.saturating_mul(BODY_COST as u64).div_ceil(1024);
    u32::try_from(kib).unwrap_or(u32::MAX).min(total)
}

/// A request body of undeclared length, charged to the budget frame by frame.
struct BudgetedBody {
    inner: Body,
    budget: Arc<Semaphore>,
    total: u32,
    held: Held,
    received: u64,
    charged: u32,
    /// Out of budget: the error was returned; what follows is only drained.
    refused: bool,
}

impl hyper::body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if self.refused {
            return Poll::Ready(frame);
        }
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, Bytes::len) as u64;
            self.received += len;
            let needed = cost_kib(self.received, self.total);
            if needed > self.charged {
                let Ok(more) = self.budget.clone().try_acquire_many_owned(needed - self.charged) else {
                    self.refused = true;
                    return Poll::Ready(Some(Err(axum::Error::new(Shed::BodyMemory(self.total as usize)))));
                };
                self.charged = needed;
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                match held.as_mut() {
                    Some(permit) => permit.merge(more),
                    None => *held = Some(more),
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The shed behind a body read error, when the body ran out of budget.
pub fn shed_of(error: &axum::Error) -> Option<Shed> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(shed) = e.downcast_ref::<Shed>() {
            return Some(*shed);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::capacity::MemorySource;

    fn admission(in_flight: usize, memory: u64) -> Admission {
        Admission::new(&Capacity::derive(Some((memory, MemorySource::Flag)), Some(in_flight), None))
    }

    fn request(body: Body, length: Option<usize>) -> Request {
        let mut builder = axum::http::Request::post("/v1/chat/completions");
        if let Some(length) = length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder.body(body).expect("request")
    }

    #[test]
    fn past_the_in_flight_slots_requests_are_shed_until_one_finishes() {
        let admission = admission(2, 256 << 20);
        let a = admission.admit(request(Body::empty(), Some(0))).expect("first");
        let _b = admission.admit(request(Body::empty(), Some(0))).expect("second");
        let (shed, _) = admission.admit(request(Body::empty(), Some(0))).expect_err("third");
        assert_eq!(shed, Shed::InFlight(2));
        assert_eq!(shed.to_string(), "the gateway is at its limit of 2 requests in flight; try again shortly");
        drop(a);
        admission.admit(request(Body::empty(), Some(0))).expect("a slot is free again");
    }

    #[test]
    fn declared_bodies_are_charged_four_times_their_size_up_front() {
        // 8 MiB of memory: a 1 MiB body budget, that is 256 KiB of raw body.
        let admission = admission(100, 8 << 20);
        let held = admission.admit(request(Body::empty(), Some(200 * 1024))).expect("200 KiB fits");
        let (shed, _) = admission.admit(request(Body::empty(), Some(100 * 1024))).expect_err("100 KiB more does not");
        assert_eq!(shed, Shed::BodyMemory(1024));
        assert!(shed.to_string().contains("(1 MiB)"), "{shed}");
        admission.admit(request(Body::empty(), Some(50 * 1024))).expect("50 KiB does");
        drop(held);
        // A body that alone costs more than the budget takes all of it: it passes when no other body is held.
        admission
            .admit(request(Body::empty(), Some(10 << 20)))
            .expect("an oversized body passes when no other body is held");
    }

    #[tokio::test]
    async fn undeclared_bodies_are_charged_as_they_arrive_and_fail_the_read_when_out_of_memory() {
        let admission = admission(100, 8 << 20);
        let _held = admission.admit(request(Body::empty(), Some(200 * 1024))).expect("200 KiB declared");
        let chunks = (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 8 * 1024])));
        let (request, _ticket) =
            admission.admit(request(Body::from_stream(futures_util::stream::iter(chunks)), None)).expect("admitted");
        let mut stream = request.into_body().into_data_stream();
        let mut read = 0;
        let error = loop {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                Some(Err(e)) => break e,
                None => panic!("the whole body was read past the budget"),
            }
        };
        assert_eq!(read, 56 * 1024, "64 KiB of body would cost more than the 224 KiB left");
        assert_eq!(shed_of(&error), Some(Shed::BodyMemory(1024)));
        let mut drained = 0;
        while let Some(chunk) = stream.next().await {
            drained += chunk.expect("the rest passes, to be drained").len();
        }
        assert_eq!(drained, 16 * 1024, "what followed the refused frame");
    }
}
