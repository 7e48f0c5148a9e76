//! Links libmodsecurity when the `modsecurity` feature is on, found through pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MODSECURITY").is_none() {
        return;
    }
    if let Err(err) = pkg_config::Config::new()
        .atleast_version("3.0")
        .probe("modsecurity")
    {
        panic!(
            "the `modsecurity` feature needs libmodsecurity 3 and its pkg-config file ({err}); \
             install it with `apt-get install libmodsecurity-dev modsecurity-crs`, or build \
             without the feature"
        );
    }
}
