//! Scenario tests: real `cascade` processes (site server, DPs) on loopback,
//! driven through the CLI and HTTP as an administrator would.

mod harness;

mod agents;
mod bad_input;
mod distribution;
mod hierarchy;
mod jobs;
mod quickstart;
mod repair;
mod runs;
mod tidy;
