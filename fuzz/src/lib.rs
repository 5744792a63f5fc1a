//! Ward's pure protocol parsers, compiled from the server's own source files (no copies).

pub mod clients;
pub mod oauth;
pub mod patients;
pub mod smart;
