//! The config reader: `k3s-xdp check`'s whole path over the file's text (TOML syntax, every
//! key's reader, the rules across keys, the messages and the summary it prints), then the
//! renderer's promise: what `Config::to_toml` writes reads back as an equal config.

#![no_main]

use k3s_xdp::config::{self, Config};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // `check` reads the file with read_to_string: text that is not UTF-8 never gets further.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz.toml");
    match config::parse(text, origin) {
        Ok(config) => summarize(&config),
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "a refused config names at least one error"
            );
            for e in errors.iter() {
                // `check` prints each; every one must be printable.
                let _ = e.to_string();
            }
        }
    }
});

/// What `check` prints of a valid config, then the round trip through the renderer.
fn summarize(config: &Config) {
    for w in &config.warnings {
        let _ = w.to_string();
    }
    let _ = config.snat_capacity();
    let _ = config.held_addresses();
    if let Some(b) = &config.bgp {
        let _ = b.announced(&config.services);
    }
    let rendered = config.to_toml();
    match config::parse(&rendered, Path::new("rendered.toml")) {
        Ok(again) => assert!(
            again == *config,
            "the rendered config reads back different:\n{rendered}\n{config:#?}\n{again:#?}"
        ),
        Err(e) => panic!("the rendered config is refused: {e}\n{rendered}"),
    }
}
