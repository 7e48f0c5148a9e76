//! Integration tests: a real upstream on loopback, the gateway in front of it, and real
//! clients (raw bytes over TLS, hyper, curl). One module per area.

mod csrf;
mod headers;
mod limits;
mod proxy;
mod redirect;
mod smuggling;
mod support;
mod tls;
mod validate;
