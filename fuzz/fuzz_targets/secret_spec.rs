//! envrun's inputs: `--secret PATH[#KEY[#VERSION]][=NAME]`, `kinko:` references in inherited
//! variables, and its naming flags. A spec that parses names a clean KV path and prints back to
//! itself; every variable name it produces is a valid one.
#![no_main]

use kinko_spec::{parse_naming_flags, parse_reference, parse_secret_spec, Reference};
use libfuzzer_sys::fuzz_target;

fn clean_path(path: &str) {
    assert!(!path.is_empty());
    for segment in path.split('/') {
        assert!(
            !segment.is_empty() && segment != "." && segment != "..",
            "{path:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let spec_text = lines.next().unwrap_or_default();
    let reference_text = lines.next().unwrap_or_default();
    let flags: Vec<&str> = lines.collect();

    if let Ok(spec) = parse_secret_spec(spec_text) {
        clean_path(&spec.secret.path);
        let mut printed = spec.secret.to_string();
        if let Some(name) = &spec.name {
            printed.push('=');
            printed.push_str(name);
        }
        assert_eq!(
            parse_secret_spec(&printed).as_ref(),
            Ok(&spec),
            "{printed:?}"
        );
        if let Ok(naming) = parse_naming_flags(flags.iter().copied()) {
            let again = parse_naming_flags(naming.to_flags().iter().map(String::as_str))
                .expect("own flags parse");
            assert_eq!(format!("{again:?}"), format!("{naming:?}"));
            let key = spec.secret.key.clone().unwrap_or_else(|| "key".into());
            if let Ok(name) = naming.name_for(&spec, &key) {
                assert!(kinko_spec::is_valid_name(&name), "{name:?}");
            }
        }
    }
    match parse_reference("VARIABLE", reference_text) {
        Ok(Some(Reference::Secret(secret))) => {
            clean_path(&secret.path);
            assert!(secret.key.is_some());
        }
        Ok(Some(Reference::Sealed(value))) => assert_eq!(value, reference_text),
        Ok(None) => assert!(!reference_text.starts_with("kinko:")),
        Err(_) => assert!(reference_text.starts_with("kinko:")),
    }
});
