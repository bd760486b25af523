//! The worker loop.
