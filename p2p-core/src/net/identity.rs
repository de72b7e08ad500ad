//! Device identity: the key pair an installation creates on first use, its self-signed
//! certificate for TLS, and the [`DeviceId`] people read, type and compare.
//!
//! The key is Ed25519, stored as PKCS#8 PEM in [`KEY_FILE`] in the data folder, readable
//! by the owner only. The certificate is derived from it on every start (it carries
//! nothing but the key: peers never look at names or dates in it), so only the key has
//! to be kept. A key file that exists but cannot be read or parsed is reported and left
//! alone: replacing it would silently turn this device into a stranger for every peer
//! that trusts it.
//!
//! The **fingerprint** is SHA-256 of the certificate's SubjectPublicKeyInfo (DER). The
//! **device id** is its first 120 bits in Crockford base32 (24 characters) followed by
//! one check character (Luhn mod 32), shown in five groups of five:
//! `7K3QD-M2XWA-0B9ZT-4RHCE-P1VNF`. Typing is forgiving: case, `-` and spaces do not
//! matter, `O` reads as `0` and `I`/`L` as `1`; a typo is caught by the check character
//! in all single-character substitutions and most transpositions.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The key file's name in the data folder.
pub const KEY_FILE: &str = "device-key.pem";

/// Bytes of the fingerprint the device id shows (120 bits).
pub const ID_BYTES: usize = 15;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// SHA-256 of a device's public key (SubjectPublicKeyInfo DER): what trust is bound to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The fingerprint of the key in a certificate; `None` when it does not parse.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        Some(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    /// The device id this fingerprint is shown as.
    pub fn device_id(&self) -> DeviceId {
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&self.0[..ID_BYTES]);
        DeviceId(id)
    }

    /// Lower-case hex, for files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`Fingerprint::to_hex`]'s output.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// The short, checkable name of a device key (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; ID_BYTES]);

impl DeviceId {
    /// A random id (tests, and beacons of programs that have no key).
    pub fn random() -> Self {
        DeviceId(rand::random())
    }

    /// Whether `fingerprint` is this id's key.
    pub fn matches(&self, fingerprint: &Fingerprint) -> bool {
        fingerprint.0[..ID_BYTES] == self.0
    }

    fn digits(&self) -> [u8; 24] {
        // 120 bits = 24 five-bit digits, most significant first.
        let mut digits = [0u8; 24];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for byte in self.0 {
            acc = (acc << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                digits[n] = ((acc >> bits) & 31) as u8;
                n += 1;
            }
            acc &= (1 << bits) - 1;
        }
        digits
    }

    /// The first group, for tables and log lines (not for checking anything).
    pub fn short(&self) -> String {
        self.to_string()[..5].to_owned()
    }
}

/// Luhn mod 32 check digit over `digits` (values 0..32).
fn check_digit(digits: &[u8]) -> u8 {
    let mut factor = 2u32;
    let mut sum = 0u32;
    for &d in digits.iter().rev() {
        let addend = factor * u32::from(d);
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    ((32 - sum % 32) % 32) as u8
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits();
        let mut all = digits.to_vec();
        all.push(check_digit(&digits));
        for (i, d) in all.iter().enumerate() {
            if i > 0 && i % 5 == 0 {
                f.write_str("-")?;
            }
            write!(f, "{}", ALPHABET[usize::from(*d)] as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Why a typed device id was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("a device id has 25 characters (5 groups of 5), this has {0}")]
    Length(usize),
    #[error("{0:?} is not a device id character (0-9 and A-Z without I, L, O, U)")]
    Character(char),
    #[error("the device id's check character does not match: a typo?")]
    Check,
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digits = Vec::with_capacity(25);
        for c in s.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            let value = ALPHABET
                .iter()
                .position(|&a| a as char == c)
                .ok_or(DeviceIdError::Character(c))?;
            digits.push(value as u8);
        }
        if digits.len() != 25 {
            return Err(DeviceIdError::Length(digits.len()));
        }
        if check_digit(&digits[..24]) != digits[24] {
            return Err(DeviceIdError::Check);
        }
        let mut bytes = [0u8; ID_BYTES];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &d in &digits[..24] {
            acc = (acc << 5) | u32::from(d);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[n] = (acc >> bits) as u8;
                n += 1;
                acc &= (1 << bits) - 1;
            }
        }
        Ok(DeviceId(bytes))
    }
}

/// In JSON (the trust store) the rendered text; in postcard (beacons) the 15 raw bytes.
impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; ID_BYTES]>::deserialize(d).map(DeviceId)
        }
    }
}

/// Problems with this device's own key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the device key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store the device key in {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the device key {} is damaged ({reason}); it was left as it is. Move it away to \
         create a new identity (peers that trust this device will need a code again)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot create a device key: {0}")]
    Generate(String),
}

/// This device's key pair and certificate.
pub struct Identity {
    key_der: Vec<u8>,
    certificate: CertificateDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new key pair that lives in memory only (tests, library users with their own
    /// storage).
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::from_key(&key).map_err(IdentityError::Generate)
    }

    /// An identity shared between clones of a session's options.
    pub fn generate_shared() -> Arc<Self> {
        // Ed25519 key generation only fails when the system's randomness does, which
        // nothing else here would survive either.
        Arc::new(Self::generate().expect("the system random number generator failed"))
    }

    /// Reads the key in `dir` ([`KEY_FILE`]), or creates it (owner-only permissions)
    /// when there is none. A file that exists but does not parse is an error.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let corrupt = |reason: String| IdentityError::Corrupt {
                    path: path.clone(),
                    reason,
                };
                let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| corrupt(e.to_string()))?;
                if !key.is_compatible(&rcgen::PKCS_ED25519) {
                    return Err(corrupt("not an Ed25519 key".into()));
                }
                Self::from_key(&key).map_err(corrupt)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| IdentityError::Generate(e.to_string()))?;
                write_private(dir, &path, key.serialize_pem().as_bytes())
                    .map_err(|source| IdentityError::Write { path, source })?;
                Self::from_key(&key).map_err(IdentityError::Generate)
            }
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    fn from_key(key: &rcgen::KeyPair) -> Result<Self, String> {
        let params = rcgen::CertificateParams::new(vec!["p2p-transfer".to_owned()])
            .map_err(|e| e.to_string())?;
        let certificate = params.self_signed(key).map_err(|e| e.to_string())?;
        let certificate = certificate.der().clone();
        let fingerprint = Fingerprint::of_certificate(&certificate)
            .ok_or_else(|| "the generated certificate does not parse".to_owned())?;
        Ok(Identity {
            key_der: key.serialize_der(),
            certificate,
            fingerprint,
        })
    }

    /// The device id peers see.
    pub fn device_id(&self) -> DeviceId {
        self.fingerprint.device_id()
    }

    /// SHA-256 of the public key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The self-signed certificate presented in TLS.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// Writes a file only the owner can read, atomically (temp file, fsync, rename), never
/// replacing an existing one.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // hard_link fails when the target exists: two first starts at once keep one key.
        std::fs::hard_link(&temp, path)
    })();
    let _ = std::fs::remove_file(&temp);
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_id_round_trips_and_catches_typos() {
        let identity = Identity::generate().unwrap();
        let id = identity.device_id();
        let text = id.to_string();
        assert_eq!(text.len(), 29, "{text}");
        assert_eq!(text.matches('-').count(), 4);
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        assert_eq!(
            text.to_lowercase()
                .replace('-', " ")
                .parse::<DeviceId>()
                .unwrap(),
            id
        );
        assert!(id.matches(&identity.fingerprint()));
        // Every single-character substitution is caught.
        let chars: Vec<char> = text.chars().collect();
        for i in (0..chars.len()).filter(|i| chars[*i] != '-') {
            for &a in ALPHABET {
                let a = a as char;
                if a == chars[i] {
                    continue;
                }
                let mut typo = chars.clone();
                typo[i] = a;
                let typo: String = typo.into_iter().collect();
                assert!(
                    typo.parse::<DeviceId>().is_err(),
                    "{typo} accepted for {text}"
                );
            }
        }
    }

    #[test]
    fn ambiguous_letters_read_as_digits() {
        let id = DeviceId([0; ID_BYTES]);
        assert_eq!(id.to_string(), "00000-00000-00000-00000-00000");
        assert_eq!(
            "OOOOO-ooooo-00000-00000-0000O".parse::<DeviceId>().unwrap(),
            id
        );
        assert_eq!(
            "0000".parse::<DeviceId>().unwrap_err(),
            DeviceIdError::Length(4)
        );
        assert_eq!(
            "0000U-00000-00000-00000-00000"
                .parse::<DeviceId>()
                .unwrap_err(),
            DeviceIdError::Character('U')
        );
    }

    #[test]
    fn the_key_is_created_once_kept_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.device_id(), again.device_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(
            dir.path().join(KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\ngarbage\n",
        )
        .unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(),
            "-----BEGIN PRIVATE KEY-----\ngarbage\n",
            "a damaged key file is left for the person to look at"
        );
    }
}
