//! Prints the ModSecurity configuration the gateway loads for a paranoia level, so that another
//! ModSecurity connector (nginx's, for the benchmarks) can run exactly the same rules:
//! `cargo run -p palisade-waf --example modsecurity-config -- [PARANOIA_LEVEL] [BODY_LIMIT]`.

use palisade_waf::WafOptions;

fn main() {
    let mut args = std::env::args().skip(1);
    let level = args.next().map_or(Ok(1), |a| a.parse());
    let limit = args.next().map_or(Ok(10 * 1024 * 1024), |a| a.parse());
    let (Ok(paranoia_level), Ok(limit)) = (level, limit) else {
        eprintln!("usage: modsecurity-config [PARANOIA_LEVEL 1-4] [BODY_LIMIT bytes]");
        std::process::exit(2);
    };
    let options = WafOptions {
        enabled: true,
        paranoia_level,
        ..Default::default()
    };
    match options
        .validate()
        .and_then(|()| options.modsecurity_config(limit))
    {
        Ok(config) => print!("{config}"),
        Err(err) => {
            eprintln!("modsecurity-config: {err}");
            std::process::exit(1);
        }
    }
}
