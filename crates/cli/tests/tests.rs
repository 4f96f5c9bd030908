//! Scenario tests: real `cascade` processes (site server, DPs) on loopback,
//! driven through the CLI and HTTP as an administrator would.

mod harness;

mod agents;
mod bad_input;
mod cli;
mod collection;
mod deployments;
mod distribution;
mod hierarchy;
mod jobs;
mod quickstart;
mod readme;
mod repair;
mod rough_edges;
mod runs;
mod status;
mod tidy;
mod trust;
