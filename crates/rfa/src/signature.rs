//! Detached Ed25519 signatures of receipts. `rfa keygen KEY` writes the signer's secret (32
//! bytes, hex, readable by its owner only) to KEY and the public key to `KEY.pub`;
//! `rfa unlearn --sign KEY` writes `receipt.sig` beside `receipt.json`, a signature over the
//! receipt's exact bytes; `rfa verify` checks it, and with `--public-key` that it is that
//! signer's. No network, no key service.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
pub use ed25519_dalek::SigningKey;
use ed25519_dalek::{Signer, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{bytes_of_hex, hex};

pub const SIGNATURE: &str = "receipt.sig";
const ALGORITHM: &str = "ed25519";

/// `receipt.sig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetachedSignature {
    pub algorithm: String,
    /// The signer's public key (hex): which key signed, not that it is a trusted one.
    pub public_key: String,
    pub signature: String,
}

/// Writes a new key pair to `key` and `key.pub`; refuses to replace an existing key. Returns the
/// public key (hex).
pub fn keygen(key: &Path) -> Result<String> {
    let public = public_path(key);
    for p in [key, public.as_path()] {
        ensure!(!p.exists(), "{} exists: rfa keygen never replaces a key", p.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no random key: {e}"))?;
    let signing = SigningKey::from_bytes(&seed);
    write_private(key, format!("{}\n", hex(&seed)).as_bytes())?;
    let public_hex = hex(signing.verifying_key().as_bytes());
    lora_core::tensors::write_atomic(&public, format!("{public_hex}\n").as_bytes())?;
    Ok(public_hex)
}

/// `KEY.pub` beside `KEY`.
pub fn public_path(key: &Path) -> std::path::PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".pub");
    key.with_file_name(name)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    lora_core::tensors::write_atomic(path, bytes)?;
    Ok(())
}

fn read_hex32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = lora_core::tensors::read_text_limited(path, 4096)
        .with_context(|| format!("reading {}", path.display()))?;
    bytes_of_hex(text.trim()).and_then(|b| b.try_into().ok()).with_context(|| {
        format!("{}: {what} is 64 hex digits (as `rfa keygen` writes it)", path.display())
    })
}

/// Reads a secret key file, failing before any work is done on a missing or malformed one.
pub fn read_signing_key(key: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_hex32(key, "an Ed25519 secret key")?))
}

pub fn sign(bytes: &[u8], key: &SigningKey) -> DetachedSignature {
    DetachedSignature {
        algorithm: ALGORITHM.into(),
        public_key: hex(key.verifying_key().as_bytes()),
        signature: hex(&key.sign(bytes).to_bytes()),
    }
}

pub fn write(path: &Path, sig: &DetachedSignature) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(sig)?;
    bytes.push(b'\n');
    lora_core::tensors::write_atomic(path, &bytes)?;
    Ok(())
}

/// Checks `sig_file` over `bytes`; with `trusted` (a `.pub` file), also that the signer is that
/// key. Returns the signer's public key.
pub fn check(bytes: &[u8], sig_file: &Path, trusted: Option<&Path>) -> Result<String> {
    let text = lora_core::tensors::read_text_limited(sig_file, 64 << 10)
        .with_context(|| format!("reading {}", sig_file.display()))?;
    let sig: DetachedSignature = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a detached signature", sig_file.display()))?;
    ensure!(
        sig.algorithm == ALGORITHM,
        "{}: algorithm `{}`, rfa checks `{ALGORITHM}`",
        sig_file.display(),
        sig.algorithm
    );
    let public: [u8; 32] = bytes_of_hex(&sig.public_key)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: public_key is not 32 bytes of hex", sig_file.display()))?;
    let signature: [u8; 64] = bytes_of_hex(&sig.signature)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: signature is not 64 bytes of hex", sig_file.display()))?;
    let key = VerifyingKey::from_bytes(&public)
        .with_context(|| format!("{}: public_key is not an Ed25519 key", sig_file.display()))?;
    if key.verify(bytes, &ed25519_dalek::Signature::from_bytes(&signature)).is_err() {
        bail!(
            "{}: the signature does not match the receipt: the receipt was changed after it was signed",
            sig_file.display()
        );
    }
    if let Some(t) = trusted {
        let want = read_hex32(t, "an Ed25519 public key")?;
        ensure!(
            want == public,
            "{} was signed by {}, not by the key in {}",
            sig_file.display(),
            sig.public_key,
            t.display()
        );
    }
    Ok(sig.public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signer");
        let public = keygen(&key).unwrap();
        assert!(keygen(&key).unwrap_err().to_string().contains("never replaces"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sk = read_signing_key(&key).unwrap();
        let sig_file = dir.path().join(SIGNATURE);
        write(&sig_file, &sign(b"receipt bytes", &sk)).unwrap();
        let pubf = public_path(&key);
        assert_eq!(check(b"receipt bytes", &sig_file, Some(&pubf)).unwrap(), public);
        let e = check(b"receipt bytez", &sig_file, None).unwrap_err().to_string();
        assert!(e.contains("changed after it was signed"), "{e}");
        // Another signer's valid signature is refused against the trusted key.
        let other = dir.path().join("other");
        keygen(&other).unwrap();
        write(&sig_file, &sign(b"receipt bytes", &read_signing_key(&other).unwrap())).unwrap();
        let e = check(b"receipt bytes", &sig_file, Some(&pubf)).unwrap_err().to_string();
        assert!(e.contains("not by the key"), "{e}");
        std::fs::write(&key, "zz\n").unwrap();
        assert!(read_signing_key(&key).unwrap_err().to_string().contains("64 hex digits"));
    }
}
