//! Kubernetes manifests as `kinko seal --manifest` reads them from a repository. Any text is
//! read or refused without a panic; every site found is a span of the text on the line it
//! names, and rewriting each site with its own value gives back the text byte for byte.
#![no_main]

use kinko_server::sealed::manifest::{self, Content};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sites) = manifest::sites(text) else {
        return;
    };
    let mut previous_end = 0;
    let mut same = Vec::new();
    for site in &sites {
        assert!(
            site.span.start >= previous_end,
            "spans in order, not overlapping"
        );
        previous_end = site.span.end;
        let scalar = text
            .get(site.span.clone())
            .expect("a span on char boundaries");
        let line = 1 + text[..site.span.start].matches('\n').count();
        assert_eq!(site.line, line);
        // A double-quoted scalar may spell its value with escapes; the checks of the raw text
        // below hold for scalars written plainly.
        let escaped = scalar.contains('\\');
        let unquoted = match scalar.chars().next() {
            Some(quote @ ('"' | '\'')) if scalar.len() >= 2 && scalar.ends_with(quote) => {
                &scalar[1..scalar.len() - 1]
            }
            _ => scalar,
        };
        match &site.content {
            Content::Plain(_) if !escaped => {
                assert!(unquoted.starts_with("kinko:plain:"), "{scalar:?}")
            }
            Content::Sealed(value) => {
                assert!(value.starts_with("kinko:sealed:v1:"));
                assert!(escaped || scalar.contains(value.as_str()));
            }
            Content::Plain(_) => {}
        }
        assert!(!site.name.is_empty() && !site.service_account.is_empty());
        same.push((site.span.clone(), unquoted));
    }
    assert_eq!(manifest::rewrite(text, &same), text);
});
