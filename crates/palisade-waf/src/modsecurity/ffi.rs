//! The part of libmodsecurity 3's C API the engine uses, declared by hand from
//! `modsecurity/modsecurity.h`, `rules_set.h`, `transaction.h` and `intervention.h` (3.0.9).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uchar, c_void};

/// `ModSecurity`: the library instance (opaque).
#[repr(C)]
pub struct ModSecurity {
    _private: [u8; 0],
}

/// `RulesSet`: loaded rules (opaque).
#[repr(C)]
pub struct RulesSet {
    _private: [u8; 0],
}

/// `Transaction`: one request's inspection (opaque).
#[repr(C)]
pub struct Transaction {
    _private: [u8; 0],
}

/// `ModSecurityIntervention`: what the rules ask the connector to do.
#[repr(C)]
pub struct Intervention {
    pub status: c_int,
    pub pause: c_int,
    /// Allocated by the library with malloc, or null; the caller frees it.
    pub url: *mut c_char,
    /// Allocated by the library with malloc, or null; the caller frees it.
    pub log: *mut c_char,
    pub disruptive: c_int,
}

/// `ModSecLogCb`: called for every log line, with the transaction's callback data and (with
/// the default text property) a NUL-terminated line.
pub type LogCallback = extern "C" fn(data: *mut c_void, line: *const c_void);

#[link(name = "modsecurity")]
unsafe extern "C" {
    pub fn msc_init() -> *mut ModSecurity;
    pub fn msc_who_am_i(msc: *mut ModSecurity) -> *const c_char;
    pub fn msc_set_connector_info(msc: *mut ModSecurity, connector: *const c_char);
    pub fn msc_set_log_cb(msc: *mut ModSecurity, cb: LogCallback);
    pub fn msc_cleanup(msc: *mut ModSecurity);

    pub fn msc_create_rules_set() -> *mut RulesSet;
    pub fn msc_rules_add(
        rules: *mut RulesSet,
        plain_rules: *const c_char,
        error: *mut *const c_char,
    ) -> c_int;
    pub fn msc_rules_cleanup(rules: *mut RulesSet) -> c_int;

    pub fn msc_new_transaction_with_id(
        msc: *mut ModSecurity,
        rules: *mut RulesSet,
        id: *mut c_char,
        log_cb_data: *mut c_void,
    ) -> *mut Transaction;
    pub fn msc_process_connection(
        tx: *mut Transaction,
        client: *const c_char,
        client_port: c_int,
        server: *const c_char,
        server_port: c_int,
    ) -> c_int;
    pub fn msc_process_uri(
        tx: *mut Transaction,
        uri: *const c_char,
        protocol: *const c_char,
        http_version: *const c_char,
    ) -> c_int;
    pub fn msc_add_n_request_header(
        tx: *mut Transaction,
        key: *const c_uchar,
        key_len: usize,
        value: *const c_uchar,
        value_len: usize,
    ) -> c_int;
    pub fn msc_process_request_headers(tx: *mut Transaction) -> c_int;
    pub fn msc_append_request_body(tx: *mut Transaction, body: *const c_uchar, len: usize)
    -> c_int;
    pub fn msc_process_request_body(tx: *mut Transaction) -> c_int;
    pub fn msc_intervention(tx: *mut Transaction, it: *mut Intervention) -> c_int;
    pub fn msc_transaction_cleanup(tx: *mut Transaction);
}
