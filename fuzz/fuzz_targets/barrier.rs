//! The barrier's stored forms, as a reader of storage could alter them: a stored keyring and a
//! sealed value. A keyring that parses re-serialises to a form that parses to the same keyring;
//! no altered or invented blob ever opens, and every sealed value opens only unaltered.
#![no_main]

use kinko_server::barrier::{self, Keyring};
use kinko_server::secret::Key256;
use libfuzzer_sys::fuzz_target;

const CLUSTER: &str = "fuzz-cluster";

fuzz_target!(|data: &[u8]| {
    let key = Key256::from_slice(&[7; 32]).expect("32 bytes");

    if let Ok(keyring) = Keyring::from_bytes(CLUSTER, data) {
        let bytes = keyring.to_bytes();
        let again = Keyring::from_bytes(CLUSTER, bytes.expose()).expect("own form parses");
        assert_eq!(again.to_bytes().expose(), bytes.expose());
        // A blob nobody sealed under this keyring never opens.
        assert!(keyring.decrypt("secret/fuzz", data).is_err());
    }
    let _ = barrier::term_of(data);
    assert!(barrier::open_with_key(&key, b"fuzz", data).is_err());

    // Seal the input, then alter one bit of the result where the input says.
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let sealed = barrier::seal_with_key(&key, 1, b"fuzz-aad", rest);
    let opened = barrier::open_with_key(&key, b"fuzz-aad", &sealed).expect("opens unaltered");
    assert_eq!(opened.expose(), rest);
    assert!(barrier::open_with_key(&key, b"other-aad", &sealed).is_err());
    let mut altered = sealed.clone();
    let position = usize::from(at) % altered.len();
    altered[position] ^= 1 << (at % 8);
    assert!(barrier::open_with_key(&key, b"fuzz-aad", &altered).is_err());
    assert!(barrier::open_with_key(&key, b"fuzz-aad", &sealed[..sealed.len() - 1]).is_err());
});
