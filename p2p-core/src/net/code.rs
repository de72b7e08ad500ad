//! One-time codes such as `7-guitar-orbit`: what two people say to each other so that
//! their devices can find and authenticate each other once.
//!
//! A code is a **nameplate** (a number, 1–99) and a secret of two words from the
//! BIP-39 English list (2,048 words chosen to be unambiguous in their first four
//! letters). The nameplate is public: a sender's LAN beacon carries it so that a
//! receiver finds the right sender. The whole code is the SPAKE2 password
//! ([`super::admission`]). The secret carries 2 × 11 = **22 bits**: a stranger who tries
//! to guess gets one attempt (the code is burnt after a failed one, on both sides), so
//! the chance of a successful guess is 1 in 4,194,304 per code.
//!
//! `--code` lets a person choose a code: any nameplate followed by `-` and at least one
//! more character. A chosen code is only as strong as its secret part.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Words in the secret of a generated code.
pub const CODE_WORDS: usize = 2;
/// Largest generated nameplate.
pub const MAX_NAMEPLATE: u16 = 99;
/// Longest code accepted, in bytes.
pub const MAX_CODE_LEN: usize = 128;

/// A one-time code (see the module documentation). Compared and used in its normal
/// form: lower case, words joined by `-`.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    nameplate: u16,
    secret: String,
}

impl Code {
    /// A new random code: a nameplate and [`CODE_WORDS`] words.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let words = bip39::Language::English.word_list();
        let secret: Vec<&str> = (0..CODE_WORDS)
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        Code {
            nameplate: rng.random_range(1..=MAX_NAMEPLATE),
            secret: secret.join("-"),
        }
    }

    /// A new random code on a given nameplate (the one a rendezvous server allocated).
    pub fn generate_on(nameplate: u16) -> Self {
        let mut code = Self::generate();
        code.nameplate = nameplate.max(1);
        code
    }

    /// A code of this number and these words of the BIP-39 English list (indices taken
    /// modulo 2,048).
    pub(crate) fn from_parts(nameplate: u16, words: &[usize]) -> Self {
        let list = bip39::Language::English.word_list();
        let secret: Vec<&str> = words.iter().map(|&i| list[i % list.len()]).collect();
        Code {
            nameplate: nameplate.max(1),
            secret: secret.join("-"),
        }
    }

    /// The code two peers of a swarm meet with: the mailbox `nameplate` and a secret
    /// only holders of the share's root hash know (`swarm::Hash::swarm_secret`).
    pub fn for_swarm(nameplate: u16, secret: &str) -> Self {
        Code {
            nameplate: nameplate.max(1),
            secret: secret.to_ascii_lowercase(),
        }
    }

    /// The public part, which beacons carry.
    pub fn nameplate(&self) -> u16 {
        self.nameplate
    }

    /// The SPAKE2 password: the whole code in normal form.
    pub(crate) fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Bits of secret in a generated code.
    pub fn generated_entropy_bits() -> u32 {
        CODE_WORDS as u32 * 11
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.secret)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        write!(f, "Code({}-…)", self.nameplate)
    }
}

/// Why a typed code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a code starts with its number, then '-' and the words, e.g. 7-guitar-orbit")]
    Shape,
    #[error("a code's number is 1 to 65535")]
    Nameplate,
    #[error("a code is at most {MAX_CODE_LEN} bytes")]
    Length,
    #[error("a code may contain letters, digits and '-' only")]
    Character,
}

impl FromStr for Code {
    type Err = CodeError;

    /// Parses a code as a person types it: case, surrounding blanks and blanks instead
    /// of `-` do not matter.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_CODE_LEN {
            return Err(CodeError::Length);
        }
        let normal: Vec<String> = s
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        if normal
            .iter()
            .any(|w| !w.chars().all(|c| c.is_alphanumeric()))
        {
            return Err(CodeError::Character);
        }
        let (first, rest) = normal.split_first().ok_or(CodeError::Shape)?;
        if rest.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
            return Err(CodeError::Shape);
        }
        let nameplate: u16 = first.parse().map_err(|_| CodeError::Nameplate)?;
        if nameplate == 0 {
            return Err(CodeError::Nameplate);
        }
        Ok(Code {
            nameplate,
            secret: rest.join("-"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_back_and_differ() {
        let a = Code::generate();
        let b = Code::generate();
        assert_ne!(
            a, b,
            "22 bits of secret: a repeat is a 1 in 4 million event"
        );
        assert_eq!(a.to_string().parse::<Code>().unwrap(), a);
        assert!((1..=MAX_NAMEPLATE).contains(&a.nameplate()));
        assert_eq!(a.to_string().split('-').count(), 1 + CODE_WORDS);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn typing_is_forgiving_but_the_shape_is_checked() {
        let code: Code = "  7 Guitar-ORBIT ".parse().unwrap();
        assert_eq!(code.to_string(), "7-guitar-orbit");
        assert_eq!("guitar-orbit".parse::<Code>(), Err(CodeError::Shape));
        assert_eq!("7".parse::<Code>(), Err(CodeError::Shape));
        assert_eq!("0-a".parse::<Code>(), Err(CodeError::Nameplate));
        assert_eq!("70000-a".parse::<Code>(), Err(CodeError::Nameplate));
        assert_eq!("7-a;b".parse::<Code>(), Err(CodeError::Character));
        assert_eq!("7-".repeat(100).parse::<Code>(), Err(CodeError::Length));
    }
}
