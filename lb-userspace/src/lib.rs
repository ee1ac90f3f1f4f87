//! The agent (`lbd`) and CLI (`lbctl`) of the XDP load balancer.
pub mod agent;
pub mod announce;
pub mod api;
pub mod backend_host;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod datapath;
pub mod health;
pub mod host;
pub mod limits_table;
pub mod maglev;
pub mod metrics;
pub mod schedule;
pub mod security;
pub mod web;
