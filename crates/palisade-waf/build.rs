//! Links libmodsecurity when the `modsecurity` feature is on and pkg-config finds it; without
//! the library the crate still builds, with no engine, and says so.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(libmodsecurity)");
    if std::env::var_os("CARGO_FEATURE_MODSECURITY").is_none() {
        return;
    }
    match pkg_config::Config::new()
        .atleast_version("3.0")
        .probe("modsecurity")
    {
        Ok(_) => println!("cargo::rustc-cfg=libmodsecurity"),
        Err(err) => println!(
            "cargo::warning=libmodsecurity 3 was not found ({}), so this build has no attack \
             detection and refuses [gateway.waf] enabled = true; install it with `apt-get \
             install libmodsecurity-dev modsecurity-crs pkg-config` and build again",
            err.to_string()
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .unwrap_or("pkg-config failed")
        ),
    }
}
