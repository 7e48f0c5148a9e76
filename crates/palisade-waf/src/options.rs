//! `[gateway.waf]`: the settings, their checks, and the ModSecurity setup generated from them
//! (in place of the CRS's hand-edited `crs-setup.conf`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// Attack detection settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WafOptions {
    /// Inspect requests at all (off by default: see docs/defaults.md).
    pub enabled: bool,
    /// Log what would be blocked and let it through (action `log`), to try the rules out.
    pub detect_only: bool,
    /// CRS paranoia level, 1 (fewest false positives) to 4 (most rules).
    pub paranoia_level: u8,
    /// The inbound anomaly score at which a request is blocked (CRS default 5: one critical
    /// match).
    pub inbound_anomaly_threshold: u32,
    /// Rule ids never to run (false positives of this application).
    pub exclusions: Vec<u32>,
    /// The CRS folder: its `rules/REQUEST-*.conf` are loaded.
    pub rules_dir: PathBuf,
    /// Also inspect each request's normalised form (one more URL decode, NFKC, no zero-width
    /// characters, Base64 values decoded, multipart filenames in one form).
    pub normalize: bool,
}

impl Default for WafOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            detect_only: false,
            paranoia_level: 1,
            inbound_anomaly_threshold: 5,
            exclusions: Vec::new(),
            rules_dir: PathBuf::from("/usr/share/modsecurity-crs"),
            normalize: true,
        }
    }
}

/// The first id of Palisade's own rules in the setup.
pub const OWN_RULE_BASE: u32 = 9_990_000;

impl WafOptions {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=4).contains(&self.paranoia_level) {
            return Err(Error::BadSetting {
                setting: "paranoia_level",
                message: format!(
                    "{} is not a paranoia level; use 1 (the default, fewest false positives) \
                     to 4 (every rule)",
                    self.paranoia_level
                ),
            });
        }
        if self.inbound_anomaly_threshold == 0 {
            return Err(Error::BadSetting {
                setting: "inbound_anomaly_threshold",
                message: "must be at least 1 (5, the default, blocks on one critical match)".into(),
            });
        }
        if let Some(id) = self.exclusions.iter().find(|id| **id == 0) {
            return Err(Error::BadSetting {
                setting: "exclusions",
                message: format!("{id} is not a rule id; list ids like 942100"),
            });
        }
        Ok(())
    }

    /// The CRS rule files to load, in order: `rules/REQUEST-*.conf` (responses are not
    /// inspected, so the RESPONSE files are left out).
    pub fn rule_files(&self) -> Result<Vec<PathBuf>, Error> {
        let dir = self.rules_dir.join("rules");
        let no_rules = || Error::NoRules(dir.display().to_string());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|_| no_rules())?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| is_request_rules(path))
            .collect();
        if files.is_empty() {
            return Err(no_rules());
        }
        files.sort();
        Ok(files)
    }

    /// The whole configuration handed to the engine: the setup, the rule files, the
    /// exclusions. `body_limit` is the gateway's body limit, in bytes.
    pub fn modsecurity_config(&self, body_limit: u64) -> Result<String, Error> {
        let mut config = self.setup(body_limit);
        for file in self.rule_files()? {
            config.push_str(&format!("Include \"{}\"\n", file.display()));
        }
        for id in &self.exclusions {
            config.push_str(&format!("SecRuleRemoveById {id}\n"));
        }
        Ok(config)
    }

    /// The setup before the rules: engine mode, body handling, paranoia level, threshold.
    pub fn setup(&self, body_limit: u64) -> String {
        let engine = if self.detect_only {
            "DetectionOnly"
        } else {
            "On"
        };
        let body_limit = body_limit.clamp(1, i32::MAX as u64);
        let base = OWN_RULE_BASE;
        format!(
            "SecRuleEngine {engine}\n\
             SecRequestBodyAccess On\n\
             SecResponseBodyAccess Off\n\
             SecRequestBodyLimit {body_limit}\n\
             SecRequestBodyNoFilesLimit {body_limit}\n\
             SecRequestBodyLimitAction ProcessPartial\n\
             SecAuditEngine Off\n\
             SecArgumentSeparator &\n\
             SecCookieFormat 0\n\
             SecDefaultAction \"phase:1,log,auditlog,pass\"\n\
             SecDefaultAction \"phase:2,log,auditlog,pass\"\n\
             SecRule REQUEST_HEADERS:Content-Type \"@rx (?:application(?:/soap\\+|/)|text/)xml\" \
             \"id:{xml},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML\"\n\
             SecRule REQUEST_HEADERS:Content-Type \"@rx application/(?:.+\\+)?json\" \
             \"id:{json},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON\"\n\
             SecAction \"id:{crs},phase:1,pass,nolog,t:none,\
             setvar:tx.crs_setup_version=334,\
             setvar:tx.paranoia_level={pl},\
             setvar:tx.inbound_anomaly_score_threshold={threshold},\
             setvar:tx.outbound_anomaly_score_threshold=4\"\n\
             SecRule REQBODY_ERROR \"!@eq 0\" \"id:{body_error},phase:2,t:none,pass,log,\
             msg:'The request body could not be parsed',\
             setvar:'tx.anomaly_score_pl1=+%{{tx.critical_anomaly_score}}'\"\n\
             SecRule MULTIPART_STRICT_ERROR \"!@eq 0\" \"id:{multipart_error},phase:2,t:none,\
             pass,log,msg:'The multipart body is ambiguous',\
             setvar:'tx.anomaly_score_pl1=+%{{tx.critical_anomaly_score}}'\"\n",
            xml = base,
            json = base + 1,
            crs = base + 2,
            body_error = base + 3,
            multipart_error = base + 4,
            pl = self.paranoia_level,
            threshold = self.inbound_anomaly_threshold,
        )
    }
}

fn is_request_rules(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("REQUEST-") && name.ends_with(".conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_at_paranoia_one_with_threshold_five() {
        let options: WafOptions = toml::from_str("").unwrap();
        assert_eq!(options, WafOptions::default());
        assert!(!options.enabled);
        let setup = options.setup(1024);
        assert!(setup.contains("SecRuleEngine On\n"), "{setup}");
        assert!(setup.contains("setvar:tx.paranoia_level=1,"), "{setup}");
        assert!(
            setup.contains("setvar:tx.inbound_anomaly_score_threshold=5,"),
            "{setup}"
        );
        assert!(setup.contains("SecRequestBodyLimit 1024\n"), "{setup}");
    }

    #[test]
    fn settings_become_the_setup() {
        let options: WafOptions = toml::from_str(
            "enabled = true\ndetect_only = true\nparanoia_level = 4\n\
             inbound_anomaly_threshold = 10\nexclusions = [942100, 920350]",
        )
        .unwrap();
        options.validate().unwrap();
        let setup = options.setup(10 << 20);
        assert!(setup.contains("SecRuleEngine DetectionOnly\n"), "{setup}");
        assert!(setup.contains("tx.paranoia_level=4,"), "{setup}");
        assert!(setup.contains("tx.inbound_anomaly_score_threshold=10,"));
        // libmodsecurity 3 refuses IncludeOptional: only plain Include lines.
        let options = WafOptions {
            rules_dir: PathBuf::from("/usr/share/modsecurity-crs"),
            ..options
        };
        if let Ok(config) = options.modsecurity_config(1) {
            assert!(!config.contains("IncludeOptional"));
            assert!(config.contains("REQUEST-942-APPLICATION-ATTACK-SQLI.conf\"\n"));
            assert!(!config.contains("RESPONSE-"));
            let tail = config.split("Include").last().unwrap();
            assert!(tail.contains("SecRuleRemoveById 942100\nSecRuleRemoveById 920350\n"));
        }
    }

    #[test]
    fn bad_settings_name_themselves_and_the_fix() {
        let bad = |options: WafOptions| match options.validate() {
            Err(Error::BadSetting { setting, message }) => (setting, message),
            other => panic!("accepted: {other:?}"),
        };
        let (setting, message) = bad(WafOptions {
            paranoia_level: 5,
            ..Default::default()
        });
        assert_eq!(setting, "paranoia_level");
        assert!(message.contains("1 (the default"), "{message}");
        let (setting, _) = bad(WafOptions {
            inbound_anomaly_threshold: 0,
            ..Default::default()
        });
        assert_eq!(setting, "inbound_anomaly_threshold");
        let (setting, _) = bad(WafOptions {
            exclusions: vec![0],
            ..Default::default()
        });
        assert_eq!(setting, "exclusions");
        let err = toml::from_str::<WafOptions>("paranoia = 2").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_folder_without_rules_is_refused_with_the_fix() {
        let options = WafOptions {
            rules_dir: std::env::temp_dir().join("palisade-no-crs-here"),
            ..Default::default()
        };
        let err = options.modsecurity_config(1).unwrap_err().to_string();
        assert!(err.contains("apt-get install modsecurity-crs"), "{err}");
    }
}
