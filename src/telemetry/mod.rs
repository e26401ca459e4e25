//! What the daemon tells its operator: counters shared by the pipeline's tasks, served as
//! Prometheus text on `/metrics` and summarised at shutdown, and logs that cannot flood.

pub mod log_limit;
pub mod metrics;
pub mod server;
