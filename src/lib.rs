//! Ward: a SMART on FHIR authorization server. See README.md for what it does and DESIGN.md
//! (the team's shared design) for how it is built.
//!
//! Layers, importing downward only: `http` → services → core rules → `store` / `crypto`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod backup;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod fault;
pub mod housekeeping;
pub mod http;
pub mod keys;
pub mod oauth;
pub mod patients;
pub mod server;
pub mod smart;
pub mod startup;
pub mod store;
pub mod telemetry;
