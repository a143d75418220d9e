//! Shamir secret sharing over GF(2^8): splits the recovery key into `n` shares, any `t` recombine it.

use rand::RngCore;
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShamirError {
    #[error("threshold must be between 1 and the number of shares, and shares at most 255")]
    BadParameters,
    #[error("shares must be non-empty, of equal length, and carry distinct non-zero indexes")]
    BadShares,
}

/// Multiplication in GF(2^8) with the AES polynomial, constant-time (no table lookups by secret).
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & (b & 1).wrapping_neg();
        let carry = (a >> 7) & 1;
        a = (a << 1) ^ (0x1B & carry.wrapping_neg());
        b >>= 1;
    }
    product
}

fn gf_inv(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8).
    let mut result = 1u8;
    let mut base = a;
    let mut exponent = 254u8;
    while exponent > 0 {
        if exponent & 1 == 1 {
            result = gf_mul(result, base);
        }
        base = gf_mul(base, base);
        exponent >>= 1;
    }
    result
}

/// Each share is `secret.len() + 1` bytes: the y values followed by the x index.
pub fn split(secret: &[u8], shares: u8, threshold: u8) -> Result<Vec<SecretBytes>, ShamirError> {
    if threshold == 0 || threshold > shares {
        return Err(ShamirError::BadParameters);
    }
    let mut out: Vec<Vec<u8>> = (1..=shares)
        .map(|_| Vec::with_capacity(secret.len() + 1))
        .collect();
    let mut coefficients = Zeroizing::new(vec![0u8; threshold as usize]);
    for &byte in secret {
        coefficients[0] = byte;
        rand::rngs::OsRng.fill_bytes(&mut coefficients[1..]);
        for (index, share) in out.iter_mut().enumerate() {
            let x = index as u8 + 1;
            // Horner evaluation of the polynomial at x.
            let y = coefficients
                .iter()
                .rev()
                .fold(0u8, |acc, &c| gf_mul(acc, x) ^ c);
            share.push(y);
        }
    }
    for (index, share) in out.iter_mut().enumerate() {
        share.push(index as u8 + 1);
    }
    Ok(out.into_iter().map(SecretBytes::new).collect())
}

pub fn combine(shares: &[SecretBytes]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    let shares: Vec<&[u8]> = shares.iter().map(SecretBytes::expose).collect();
    let first = shares.first().ok_or(ShamirError::BadShares)?;
    let len = first.len();
    if len < 2 || shares.iter().any(|s| s.len() != len) {
        return Err(ShamirError::BadShares);
    }
    let xs: Vec<u8> = shares.iter().map(|s| s[len - 1]).collect();
    for (i, &x) in xs.iter().enumerate() {
        if x == 0 || xs[..i].contains(&x) {
            return Err(ShamirError::BadShares);
        }
    }
    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (i, &xi) in xs.iter().enumerate() {
        // Lagrange basis polynomial for share i evaluated at 0.
        let mut basis = 1u8;
        for (j, &xj) in xs.iter().enumerate() {
            if i != j {
                basis = gf_mul(basis, gf_mul(xj, gf_inv(xi ^ xj)));
            }
        }
        for (byte, &y) in secret.iter_mut().zip(&shares[i][..len - 1]) {
            *byte ^= gf_mul(y, basis);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(share: &SecretBytes) -> SecretBytes {
        SecretBytes::new(share.expose().to_vec())
    }

    #[test]
    fn any_threshold_subset_recombines_and_fewer_do_not() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let shares = split(&secret, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        for subset in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<SecretBytes> = subset.iter().map(|&i| copy(&shares[i])).collect();
            assert_eq!(*combine(&chosen).unwrap(), secret);
        }
        let two: Vec<SecretBytes> = shares[..2].iter().map(copy).collect();
        assert_ne!(*combine(&two).unwrap(), secret);
    }

    #[test]
    fn single_share_scheme_is_the_secret_itself() {
        let shares = split(b"key", 1, 1).unwrap();
        assert_eq!(*combine(&shares).unwrap(), b"key".to_vec());
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(split(b"k", 2, 3).err(), Some(ShamirError::BadParameters));
        assert_eq!(split(b"k", 2, 0).err(), Some(ShamirError::BadParameters));
        let shares = split(b"key", 3, 2).unwrap();
        let duplicate = vec![copy(&shares[0]), copy(&shares[0])];
        assert_eq!(combine(&duplicate), Err(ShamirError::BadShares));
        assert_eq!(combine(&[]), Err(ShamirError::BadShares));
        assert_eq!(
            combine(&[
                SecretBytes::new(vec![1, 2]),
                SecretBytes::new(vec![1, 2, 3])
            ]),
            Err(ShamirError::BadShares)
        );
    }

    #[test]
    fn field_inverse_is_correct() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1);
        }
    }
}
