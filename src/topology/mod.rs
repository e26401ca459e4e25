//! Building the pipeline from the configuration.

pub mod config;
