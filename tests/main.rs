//! Ward's one integration-test binary (STYLE.md habit 8): real servers on free ports, real
//! SQLite files and real PostgreSQL databases, real HTTP.

mod common;

mod admin_api;
mod audit_chain;
mod audit_events;
mod break_glass;
mod chromium;
mod demo;
mod faults;

mod housekeeping;
mod keys;
mod login;
mod operations;
mod ops;
mod process;
mod registry;
mod services;
mod smart;
mod tls;
mod token_writes;
