//! The soak (issue 21): the VRRP pair under three kinds of traffic for minutes while a seeded
//! schedule of faults hits backends, the admin interface, reloads, the master and the flow
//! tables; every connection accounted for, the daemons watched, and a verdict with a report.
//!
//! The pure core is [`schedule`] (which faults, in which order, from a seed), [`verdict`]
//! (time-stamped records in, measured detection and recovery and violations out) and
//! [`report`] (the Markdown page); the edge is [`runner`] (the lab and the faults),
//! [`traffic`] (the agents' connections) and [`monitor`] (the daemons' status and /proc).
//! `tests/tests/soak.rs` runs it (2 minutes in `cargo xtask test`); `cargo xtask soak
//! [--minutes N] [--seed S]` runs it longer and saves the report.

pub mod monitor;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod traffic;
pub mod verdict;

pub use runner::{run, Options, Outcome};
