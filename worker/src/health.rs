//! Liveness, readiness and Prometheus metrics over HTTP.
