//! Reading request bodies under a size limit. An oversized body is drained
//! (up to a bound) before the 413 goes out, so clients that are still sending
//! read the answer instead of a reset connection.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::AppError;

/// Bodies larger than this are not drained: the connection is dropped after the 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads `body` to its end (up to a bound) and drops it: a client still
/// sending then reads the answer instead of a reset connection.
pub async fn drain(body: Body) {
    drain_stream(body.into_data_stream(), 0).await;
}

async fn drain_stream(mut stream: axum::body::BodyDataStream, mut seen: usize) {
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// The whole body, or 413 when it is larger than `limit`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    let mut stream = body.into_data_stream();
    // The common case is one frame: it is kept without a copy.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => match crate::admission::shed_of(&e) {
                Some(shed) => {
                    drain_stream(stream, seen).await;
                    return Err(AppError::Overloaded(shed));
                }
                None => return Err(AppError::bad_request(None, format!("reading the request body failed: {e}"))),
            },
        };
        seen += chunk.len();
        if seen > limit {
            drop((first, buf));
            drain_stream(stream, seen).await;
            return Err(AppError::PayloadTooLarge { limit });
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
