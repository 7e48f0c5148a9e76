//! Integration tests: a real upstream on loopback, the gateway in front of it, and real
//! clients (raw bytes over TLS, hyper, curl). One module per area.

mod brute_force;
mod challenge;
mod clamd;
mod csrf;
mod forms;
mod headers;
mod limits;
mod proxy;
mod ratelimit;
mod redirect;
mod rich_text;
mod smuggling;
mod support;
mod tls;
mod uploads;
mod validate;
