//! The agent (`lbd`) and CLI (`lbctl`) of the XDP load balancer.
pub mod datapath;
pub mod maglev;
