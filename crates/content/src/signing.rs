//! Ed25519 signatures over manifest bytes, and the key files that hold the
//! central site's signing key.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{quote_input, Error, Result};
use crate::manifest::Manifest;

/// A manifest as it travels and is stored: the exact bytes that were signed,
/// and the signature over them. Receivers verify the bytes, never a
/// re-serialisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    /// The manifest's canonical JSON, exactly as signed.
    pub bytes: Vec<u8>,
    /// Ed25519 signature over `bytes`.
    pub signature: [u8; 64],
}

/// Validates `manifest`, serialises it canonically and signs the bytes.
pub fn sign(manifest: &Manifest, key: &SigningKey) -> Result<SignedManifest> {
    manifest.validate()?;
    let bytes = manifest.to_bytes();
    let signature = key.sign(&bytes).to_bytes();
    Ok(SignedManifest { bytes, signature })
}

impl SignedManifest {
    /// Checks the signature against `key` ([`Error::BadSignature`] if it
    /// fails), then parses and validates the manifest.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Manifest> {
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.bytes, &signature)
            .map_err(|_| Error::BadSignature)?;
        Manifest::from_bytes(&self.bytes)
    }
}

/// Signs a statement other than a manifest (a job's intent, a status
/// message): the signature covers `context` followed by `bytes`, so a
/// signature made for one kind of statement never verifies as another,
/// nor as a manifest (whose signed bytes begin with `{`).
pub fn sign_statement(context: &[u8], bytes: &[u8], key: &SigningKey) -> [u8; 64] {
    key.sign(&[context, bytes].concat()).to_bytes()
}

/// Checks a signature made by [`sign_statement`] with the same `context`
/// ([`Error::BadSignature`] if it fails).
pub fn verify_statement(
    context: &[u8],
    bytes: &[u8],
    signature: &[u8; 64],
    key: &VerifyingKey,
) -> Result<()> {
    key.verify_strict(
        &[context, bytes].concat(),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| Error::BadSignature)
}

/// A fresh random signing key from the operating system's generator.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes the 32 secret bytes as hex to a new file with mode 0600, crash-safely
/// (temporary file, fsync, rename, fsync of the directory). Refuses to
/// overwrite an existing file.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::KeyExists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // tempfile creates the file with mode 0600 on Unix.
    let mut temp = tempfile::Builder::new()
        .prefix(".key-")
        .tempfile_in(&dir)
        .map_err(Error::io("creating temporary key file in", &dir))?;
    let mut contents = hex::encode(key.to_bytes());
    contents.push('\n');
    temp.write_all(contents.as_bytes())
        .and_then(|()| set_owner_only(temp.as_file()))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(Error::io("writing key file", temp.path()))?;
    temp.persist_noclobber(path).map_err(|error| {
        if error.error.kind() == io::ErrorKind::AlreadyExists {
            Error::KeyExists {
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                action: "moving key file into place at",
                path: path.to_path_buf(),
                source: error.error,
            }
        }
    })?;
    fs::File::open(&dir)
        .and_then(|directory| directory.sync_all())
        .map_err(Error::io("syncing directory", &dir))?;
    Ok(())
}

#[cfg(unix)]
fn set_owner_only(file: &fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_owner_only(_file: &fs::File) -> io::Result<()> {
    Ok(())
}

/// Reads a key file written by [`write_key`] (hex, surrounding whitespace
/// ignored).
pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).map_err(|source| Error::Io {
        action: "reading key file",
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason| Error::InvalidKeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut secret = [0u8; 32];
    let text = text.trim();
    if text.len() != 64 {
        return Err(invalid("expected 64 hex digits"));
    }
    hex::decode_to_slice(text, &mut secret).map_err(|_| invalid("not hex"))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The public key as 64 lowercase hex digits.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses a public key from 64 hex digits, refusing points that are not
/// valid ed25519 public keys.
pub fn public_key_from_hex(s: &str) -> Result<VerifyingKey> {
    let invalid = |reason| Error::InvalidPublicKey {
        input: quote_input(s),
        reason,
    };
    let s = s.trim();
    if s.len() != 64 {
        return Err(invalid("expected 64 hex digits"));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid("not hex"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("not a valid ed25519 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;
    use proptest::prelude::*;

    fn fixed_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_statement_signature_holds_only_in_its_context() {
        let key = fixed_key(3);
        let signature = sign_statement(b"one\n", b"{\"a\":1}", &key);
        let public = key.verifying_key();
        verify_statement(b"one\n", b"{\"a\":1}", &signature, &public).unwrap();
        for (context, bytes) in [(&b"two\n"[..], &b"{\"a\":1}"[..]), (b"one\n", b"{\"a\":2}")] {
            assert!(matches!(
                verify_statement(context, bytes, &signature, &public),
                Err(Error::BadSignature)
            ));
        }
        // Nor is it a manifest signature over the same bytes.
        let signed = SignedManifest {
            bytes: b"{\"a\":1}".to_vec(),
            signature,
        };
        assert!(matches!(signed.verify(&public), Err(Error::BadSignature)));
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let key = generate_key();
        let signed = sign(&sample(), &key).unwrap();
        assert_eq!(signed.bytes, sample().to_bytes());
        assert_eq!(signed.verify(&key.verifying_key()).unwrap(), sample());
    }

    #[test]
    fn another_key_fails() {
        let signed = sign(&sample(), &fixed_key(1)).unwrap();
        assert!(matches!(
            signed.verify(&fixed_key(2).verifying_key()),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn invalid_manifest_is_not_signed() {
        let mut manifest = sample();
        manifest.entries[0].path = "../escape".to_string();
        assert!(sign(&manifest, &fixed_key(1)).is_err());
    }

    #[test]
    fn signed_but_invalid_bytes_are_refused_after_verifying() {
        // A correctly signed but invalid manifest (signed by hand) still fails.
        let key = fixed_key(3);
        let mut manifest = sample();
        manifest.entries.reverse();
        let bytes = manifest.to_bytes();
        let signed = SignedManifest {
            signature: key.sign(&bytes).to_bytes(),
            bytes,
        };
        assert!(matches!(
            signed.verify(&key.verifying_key()),
            Err(Error::InvalidManifest { .. })
        ));
    }

    #[test]
    fn key_file_round_trip_mode_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("central.key");
        let key = generate_key();
        write_key(&path, &key).unwrap();
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            write_key(&path, &generate_key()),
            Err(Error::KeyExists { .. })
        ));
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "zz").unwrap();
        assert!(matches!(read_key(&path), Err(Error::InvalidKeyFile { .. })));
        fs::write(&path, "g".repeat(64)).unwrap();
        assert!(matches!(read_key(&path), Err(Error::InvalidKeyFile { .. })));
        assert!(matches!(
            read_key(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn public_key_hex_round_trip() {
        let key = fixed_key(9).verifying_key();
        let hex = public_key_hex(&key);
        assert_eq!(hex.len(), 64);
        assert_eq!(public_key_from_hex(&hex).unwrap(), key);
        assert!(public_key_from_hex(&hex[2..]).is_err());
        assert!(public_key_from_hex(&"x".repeat(64)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_flipped_bit_fails_verification(bit in any::<prop::sample::Index>(), in_signature in any::<bool>()) {
            let key = fixed_key(5);
            let mut signed = sign(&sample(), &key).unwrap();
            if in_signature {
                let position = bit.index(64 * 8);
                signed.signature[position / 8] ^= 1 << (position % 8);
            } else {
                let position = bit.index(signed.bytes.len() * 8);
                signed.bytes[position / 8] ^= 1 << (position % 8);
            }
            prop_assert!(matches!(signed.verify(&key.verifying_key()), Err(Error::BadSignature)));
        }
    }
}
