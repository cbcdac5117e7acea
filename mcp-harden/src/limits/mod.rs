//! Limits: per-caller rate limiting (in-memory GCRA via `governor`).

mod rate;

pub use rate::{RateDecision, RateLimiter};
