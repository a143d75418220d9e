//! Policies in Vault HCL and in JSON (the text decides: `{` first is JSON). Whatever parses must
//! mean what it says: on a path named exactly by a rule, the merged ACL grants a capability
//! exactly when the rules on that pattern grant it and none of them denies.
#![no_main]

use std::sync::Arc;

use kinko_server::path::LogicalPath;
use kinko_server::policy::{self, Acl, Capability};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = policy::parse("fuzzed", text) else {
        return;
    };
    let rules = parsed.rules.clone();
    let acl = Acl::new(&[Arc::new(parsed)]);
    assert!(!acl.is_root());
    for rule in &rules {
        if rule.pattern.contains('*') || rule.pattern.split('/').any(|s| s == "+") {
            continue;
        }
        let Ok(path) = LogicalPath::new(&rule.pattern, false) else {
            continue;
        };
        if path.as_str() != rule.pattern {
            continue;
        }
        let same: Vec<_> = rules.iter().filter(|r| r.pattern == rule.pattern).collect();
        let denied = same.iter().any(|r| r.caps.contains(Capability::Deny));
        for capability in Capability::ALL
            .into_iter()
            .filter(|c| *c != Capability::Deny)
        {
            let granted = !denied && same.iter().any(|r| r.caps.contains(capability));
            assert_eq!(
                acl.allows(&path, capability),
                granted,
                "{capability:?} on {:?}",
                rule.pattern
            );
        }
    }
});
