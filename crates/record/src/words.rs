//! Enums stored as words: one list of variants and the exact strings records hold for them, from
//! which the string form, parsing, `Display` and serde all follow (so no second list can drift
//! from the first, and a record written back has the bytes it was read from).
//!
//! A closed enum refuses a word it does not know (a record holding one does not read); an open one
//! keeps it in its `Other` variant, for fields whose writers may name things no variant covers.

/// `words! { /// doc
///     pub enum Name { Variant = "word", … }
/// }` — a closed enum (`Copy`; an unknown word does not deserialise);
/// `words! { pub enum Name { Variant = "word", … } else Other }` — an open one, whose `Other(String)`
/// holds any other word as it was written.
macro_rules! words {
    // What both kinds share: `Display` and serde's `Serialize` write `as_str`.
    (@as_text $name:ident) => {
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every word, in the order of the variants.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The word records hold for it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $word, )+
                }
            }

            /// The variant a word names, if one does.
            pub fn from_word(word: &str) -> Option<Self> {
                match word {
                    $( $word => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        $crate::words::words!(@as_text $name);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as ::serde::Deserialize>::deserialize(d)?;
                Self::from_word(&word)
                    .ok_or_else(|| <D::Error as ::serde::de::Error>::unknown_variant(&word, Self::WORDS))
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        } else $other:ident
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A word no other variant names, as it was written.
            $other(String),
        }

        impl $name {
            /// The word records hold for it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $word, )+
                    Self::$other(word) => word,
                }
            }

            /// The variant a word names (`Other` when no other does).
            pub fn from_word(word: &str) -> Self {
                match word {
                    $( $word => Self::$variant, )+
                    other => Self::$other(other.to_owned()),
                }
            }
        }

        $crate::words::words!(@as_text $name);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as ::serde::Deserialize>::deserialize(d)?;
                Ok(Self::from_word(&word))
            }
        }
    };
}

pub(crate) use words;
