//! The OWASP Core Rule Set through libmodsecurity 3: one library instance and one loaded rule
//! set shared by all threads, a transaction per request, rule ids read from its log lines.

#![allow(unsafe_code)]

mod ffi;

use std::{
    collections::HashSet,
    ffi::{CStr, CString, c_char, c_void},
    ptr,
};

use crate::{EngineError, Error, Match, RequestView, RuleEngine, Verdict, WafOptions};

/// Held while rules load: libmodsecurity's rule parser is not reentrant.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The rule that blocks on the inbound anomaly score.
const BLOCKING_EVALUATION: u32 = 949110;

/// libmodsecurity with the CRS loaded.
pub struct ModSecurityEngine {
    msc: *mut ffi::ModSecurity,
    rules: *mut ffi::RulesSet,
    /// Every rule id the loaded files define: a log line's ids are believed only if they are
    /// one of these (a payload may quote `[id "…"]` itself).
    known_ids: HashSet<u32>,
    detect_only: bool,
    version: String,
}

// SAFETY: the library instance and the rule set are written only while `new` loads them;
// after that libmodsecurity only reads them, and it is built to serve concurrent transactions
// from one instance and one rule set (the Apache threaded MPMs and nginx's thread pools do).
// Each transaction is created, used and freed on one thread inside `inspect`.
unsafe impl Send for ModSecurityEngine {}
// SAFETY: as above; `inspect` takes `&self` and touches only its own transaction.
unsafe impl Sync for ModSecurityEngine {}

impl std::fmt::Debug for ModSecurityEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModSecurityEngine")
            .field("version", &self.version)
            .field("rules", &self.known_ids.len())
            .finish()
    }
}

impl ModSecurityEngine {
    /// Loads the CRS as `options` ask, for requests of at most `body_limit` bytes.
    pub fn new(options: &WafOptions) -> Result<Self, Error> {
        Self::with_body_limit(options, 10 * 1024 * 1024)
    }

    /// Loads the CRS as `options` ask, for bodies of at most `body_limit` bytes.
    pub fn with_body_limit(options: &WafOptions, body_limit: u64) -> Result<Self, Error> {
        options.validate()?;
        let config = options.modsecurity_config(body_limit)?;
        let known_ids = rule_ids_in(&config, &options.rule_files()?);
        let config = CString::new(config)
            .map_err(|_| Error::RulesRejected("the rules path holds a NUL byte".into()))?;
        // SAFETY: msc_init has no preconditions; a null result is checked below.
        let msc = unsafe { ffi::msc_init() };
        if msc.is_null() {
            return Err(Error::RulesRejected("libmodsecurity did not start".into()));
        }
        let connector = c"palisade";
        // SAFETY: msc is a live instance; the strings outlive the calls (the library copies
        // the connector name) and the callback is a plain function with the declared ABI.
        let version = unsafe {
            ffi::msc_set_connector_info(msc, connector.as_ptr());
            ffi::msc_set_log_cb(msc, log_line);
            CStr::from_ptr(ffi::msc_who_am_i(msc))
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: a fresh rule set; a null result is checked below.
        let rules = unsafe { ffi::msc_create_rules_set() };
        let engine = Self {
            msc,
            rules,
            known_ids,
            detect_only: options.detect_only,
            version,
        };
        if rules.is_null() {
            return Err(Error::RulesRejected("no rule set could be made".into()));
        }
        let mut error: *const c_char = ptr::null();
        // The rule parser (flex and bison) keeps global state: one load at a time per process.
        let _loading = LOADING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: rules is live, config is NUL-terminated, error is a valid out pointer.
        let loaded = unsafe { ffi::msc_rules_add(rules, config.as_ptr(), &mut error) };
        if loaded < 0 {
            return Err(Error::RulesRejected(take_string(error.cast_mut())));
        }
        Ok(engine)
    }
}

impl Drop for ModSecurityEngine {
    fn drop(&mut self) {
        // SAFETY: both were made in `new`, no transaction is open (they live only inside
        // `inspect`, which borrows self), and each is freed once.
        unsafe {
            if !self.rules.is_null() {
                ffi::msc_rules_cleanup(self.rules);
            }
            ffi::msc_cleanup(self.msc);
        }
    }
}

impl RuleEngine for ModSecurityEngine {
    fn inspect(&self, request: &RequestView) -> Result<Verdict, EngineError> {
        let mut lines: Vec<String> = Vec::new();
        let transaction = Transaction::new(self, &mut lines)?;
        let (disruptive, log) = transaction.run(request)?;
        drop(transaction);
        // The line of the rule that interrupted comes with the intervention, not the callback.
        lines.extend(log);
        Ok(self.verdict(&lines, disruptive))
    }

    fn name(&self) -> String {
        format!("{} with the OWASP CRS", self.version)
    }
}

impl ModSecurityEngine {
    fn verdict(&self, lines: &[String], disruptive: bool) -> Verdict {
        let mut verdict = Verdict {
            block: disruptive,
            ..Verdict::default()
        };
        for line in lines {
            let Some(found) = parse_line(line, &self.known_ids) else {
                continue;
            };
            if found.id == BLOCKING_EVALUATION {
                verdict.anomaly_score = total_score(&found.message);
                verdict.block |= self.detect_only;
            }
            if !verdict.matches.contains(&found) {
                verdict.matches.push(found);
            }
        }
        verdict
    }
}

/// One open transaction; freed on drop.
struct Transaction {
    tx: *mut ffi::Transaction,
}

impl Transaction {
    fn new(engine: &ModSecurityEngine, lines: &mut Vec<String>) -> Result<Self, EngineError> {
        let mut id = transaction_id();
        let data: *mut Vec<String> = lines;
        // SAFETY: the instance and rules are live for `engine`'s lifetime, which outlives the
        // transaction (dropped inside `inspect`); the id is NUL-terminated and copied by the
        // library; `data` stays valid for the transaction's life, as `lines` is borrowed
        // mutably for all of it and only the log callback writes through it.
        let tx = unsafe {
            ffi::msc_new_transaction_with_id(
                engine.msc,
                engine.rules,
                id.as_mut_ptr().cast(),
                data.cast(),
            )
        };
        if tx.is_null() {
            return Err(EngineError("libmodsecurity made no transaction".into()));
        }
        Ok(Self { tx })
    }

    /// Runs the request phases; whether the rules asked to interrupt, and the log line of the
    /// rule that did.
    fn run(&self, request: &RequestView) -> Result<(bool, Option<String>), EngineError> {
        let cstring = |text: &str| {
            CString::new(text).map_err(|_| EngineError("a request part holds a NUL byte".into()))
        };
        let client = cstring(&request.client.ip().to_string())?;
        let server = cstring(&request.server.ip().to_string())?;
        let uri = cstring(&request.uri)?;
        let method = cstring(&request.method)?;
        let version = cstring(request.version)?;
        // SAFETY: tx is live; every string is NUL-terminated and outlives its call (the
        // library copies what it keeps); header and body pointers come with their lengths.
        unsafe {
            ffi::msc_process_connection(
                self.tx,
                client.as_ptr(),
                i32::from(request.client.port()),
                server.as_ptr(),
                i32::from(request.server.port()),
            );
            ffi::msc_process_uri(self.tx, uri.as_ptr(), method.as_ptr(), version.as_ptr());
            for (name, value) in &request.headers {
                ffi::msc_add_n_request_header(
                    self.tx,
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                );
            }
            ffi::msc_process_request_headers(self.tx);
        }
        let interrupted = self.intervention();
        if interrupted.0 {
            return Ok(interrupted);
        }
        // SAFETY: as above; the body pointer comes with its length.
        unsafe {
            if !request.body.is_empty() {
                ffi::msc_append_request_body(self.tx, request.body.as_ptr(), request.body.len());
            }
            ffi::msc_process_request_body(self.tx);
        }
        Ok(self.intervention())
    }

    /// Whether the rules ask to interrupt, and the log line of the rule that does.
    fn intervention(&self) -> (bool, Option<String>) {
        let mut it = ffi::Intervention {
            status: 200,
            pause: 0,
            url: ptr::null_mut(),
            log: ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: tx is live and `it` is initialised as the header asks; the library may set
        // `url` and `log` to malloc'd strings, which are freed right here.
        let asked = unsafe { ffi::msc_intervention(self.tx, &mut it) };
        take_string(it.url);
        let log = take_string(it.log);
        let disruptive = asked != 0 && it.disruptive != 0;
        (disruptive, (disruptive && !log.is_empty()).then_some(log))
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // SAFETY: made in `new`, freed once, never used after.
        unsafe { ffi::msc_transaction_cleanup(self.tx) }
    }
}

/// The log callback: appends the line to the transaction's list.
extern "C" fn log_line(data: *mut c_void, line: *const c_void) {
    if data.is_null() || line.is_null() {
        return;
    }
    // SAFETY: `data` is the `Vec<String>` that `Transaction::new` passed, alive and borrowed
    // for the whole transaction, and the callback runs on the thread that drives it; `line` is
    // a NUL-terminated string (the default text log property).
    let (lines, line) = unsafe {
        (
            &mut *data.cast::<Vec<String>>(),
            CStr::from_ptr(line.cast::<c_char>()),
        )
    };
    lines.push(line.to_string_lossy().into_owned());
}

/// Takes a malloc'd C string from the library, freeing it.
fn take_string(text: *mut c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string the library allocated with malloc and handed over.
    unsafe {
        let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
        libc::free(text.cast());
        owned
    }
}

/// A random id for the transaction, NUL-terminated.
fn transaction_id() -> [u8; 33] {
    let mut random = [0u8; 16];
    let _ = getrandom::fill(&mut random);
    let mut id = [0u8; 33];
    for (i, byte) in random.iter().enumerate() {
        let hex = b"0123456789abcdef";
        id[2 * i] = hex[usize::from(byte >> 4)];
        id[2 * i + 1] = hex[usize::from(byte & 15)];
    }
    id
}

/// The rule a log line reports: the first `[id "N"]` that is a loaded rule, and its message.
pub(crate) fn parse_line(line: &str, known: &HashSet<u32>) -> Option<Match> {
    let mut rest = line;
    while let Some(start) = rest.find("[id \"") {
        rest = &rest[start + 5..];
        let end = rest.find('"')?;
        let Ok(id) = rest[..end].parse::<u32>() else {
            continue;
        };
        if !known.contains(&id) {
            continue;
        }
        let message = field(rest, "[msg \"").unwrap_or_default();
        return Some(Match { id, message });
    }
    None
}

fn field(text: &str, opening: &str) -> Option<String> {
    let start = text.find(opening)? + opening.len();
    let end = text[start..].find("\"]")?;
    Some(text[start..start + end].to_string())
}

/// `Inbound Anomaly Score Exceeded (Total Score: 10)` → 10.
fn total_score(message: &str) -> Option<u32> {
    let start = message.find("Total Score: ")? + "Total Score: ".len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Every `id:N` in the setup and the rule files.
fn rule_ids_in(setup: &str, files: &[std::path::PathBuf]) -> HashSet<u32> {
    let mut ids = HashSet::new();
    let mut scan = |text: &str| {
        for (at, _) in text.match_indices("id:") {
            let digits: String = text[at + 3..]
                .trim_start_matches(['\'', '"', ' '])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(id) = digits.parse() {
                ids.insert(id);
            }
        }
    };
    scan(setup);
    for file in files {
        if let Ok(text) = std::fs::read_to_string(file) {
            scan(&text);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_rule_and_a_quoted_id_in_the_payload_is_not_believed() {
        let known: HashSet<u32> = [942100, 949110].into();
        let line = "ModSecurity: Warning. detected SQLi using libinjection. [file \"/x.conf\"] \
                    [line \"45\"] [id \"942100\"] [rev \"\"] [msg \"SQL Injection Attack \
                    Detected via libinjection\"] [data \"Matched Data: s&1c found\"]";
        let found = parse_line(line, &known).unwrap();
        assert_eq!(found.id, 942100);
        assert_eq!(
            found.message,
            "SQL Injection Attack Detected via libinjection"
        );
        let spoofed = "ModSecurity: Warning. Matched (Value: `[id \"123\"]') [id \"949110\"] \
                       [msg \"Inbound Anomaly Score Exceeded (Total Score: 10)\"]";
        let found = parse_line(spoofed, &known).unwrap();
        assert_eq!(found.id, 949110);
        assert_eq!(total_score(&found.message), Some(10));
        assert!(parse_line("ModSecurity: no id here", &known).is_none());
    }

    #[test]
    fn rule_ids_are_read_from_actions() {
        let ids = rule_ids_in(
            "SecAction \"id:900990,phase:1\"\nSecRule A B \"id:'42',pass\"",
            &[],
        );
        assert_eq!(ids, [900990, 42].into());
    }
}
