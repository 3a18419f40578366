//! The machinery of the key table in `mod.rs`. `keys!` turns one row per
//! setting into its [`AgentConfig`](super::AgentConfig) field and default, its
//! flag (typed: clap reads the value with the key's [`Kind`], and `--help`
//! shows the default), its file and `sockfwd.` key, a layer's values of it
//! ([`Keys`](super::Keys)) and how they land in the field ([`Field`]), and the
//! catalog the layers, `--print-config` and the shipped file read ([`Key`]).

use crate::config::allow::{AllowList, AllowTarget};
use crate::config::values::{Kind, ValueError};
use clap::{Arg, ArgAction, ArgGroup, ArgMatches};
use toml::Value as Toml;

/// One key, as the layers, the flags and the shipped file know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key as the file spells it (the flag: `--` and `-` for `_`; the
    /// kernel command line: `sockfwd.` before it).
    pub name: &'static str,
    /// The setting it sets: its [`AgentConfig`](super::AgentConfig) field.
    /// One layer gives at most one key of a setting.
    pub field: &'static str,
    /// Repeatable: a layer's values add up, and replace earlier layers' list.
    pub list: bool,
    /// Its help: the row's doc comment.
    pub help: &'static str,
    /// A value of its kind that no default has (tests, examples).
    pub sample: &'static str,
}

/// How the values one layer gives for a key land in its field (the last one,
/// `Some` of it, or all of them), and how the field shows in the file.
pub trait Field<T>: Sized {
    /// The field made of one layer's values of one key.
    fn land(values: Vec<T>) -> Option<Self>;
    /// The field as the file writes it; `None`: unset.
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml>;
}

impl<T> Field<T> for T {
    fn land(mut values: Vec<T>) -> Option<T> {
        values.pop()
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        Some(show(self))
    }
}

impl<T> Field<T> for Option<T> {
    fn land(mut values: Vec<T>) -> Option<Option<T>> {
        values.pop().map(Some)
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        self.as_ref().map(show)
    }
}

impl<T> Field<T> for Vec<T> {
    fn land(values: Vec<T>) -> Option<Vec<T>> {
        Some(values)
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        Some(Toml::Array(self.iter().map(show).collect()))
    }
}

impl Field<AllowTarget> for AllowList {
    fn land(values: Vec<AllowTarget>) -> Option<AllowList> {
        Some(AllowList(values))
    }
    fn show(&self, show: fn(&AllowTarget) -> Toml) -> Option<Toml> {
        self.0.show(show)
    }
}

/// Adds a value the file or the kernel command line gives for a key of kind
/// `K` (a list key's array: each element); the value that failed, and why.
pub fn add<K: Kind>(
    slot: &mut Option<Vec<K::Value>>,
    value: Toml,
) -> Result<(), (Toml, ValueError)> {
    let values = slot.get_or_insert_with(Vec::new);
    let items = match value {
        Toml::Array(items) if K::LIST => items,
        one => vec![one],
    };
    for item in items {
        values.push(K::read(item.clone()).map_err(|e| (item, e))?);
    }
    Ok(())
}

/// A key's flag: `--NAME` with `-` for `_`, its value read by `K`, its help
/// with the default (an empty list or an unset default goes unsaid).
pub fn arg<K: Kind>(key: &Key, default: Option<Toml>) -> Arg {
    let default = match default {
        Some(Toml::String(s)) => format!(" [default: {s}]"),
        Some(v @ (Toml::Integer(_) | Toml::Boolean(_))) => format!(" [default: {v}]"),
        _ => String::new(),
    };
    let action = match K::LIST {
        true => ArgAction::Append,
        false => ArgAction::Set,
    };
    Arg::new(key.name)
        .long(key.name.replace('_', "-"))
        .value_name(K::NAME)
        .help(format!("{}{default}", key.help.trim()))
        .value_parser(|s: &str| K::parse(s))
        .action(action)
}

/// Where `--help` lists a key: after the flags before it, each setting's
/// other keys right after it.
pub fn display_order(keys: &[Key], key: &Key) -> usize {
    let setting = keys.iter().position(|k| k.field == key.field).unwrap_or(0);
    let nth = keys
        .iter()
        .filter(|k| k.field == key.field)
        .position(|k| k == key);
    100 + setting * 10 + nth.unwrap_or(0)
}

/// A group for each setting with more than one key: a layer of flags gives
/// one of them.
pub fn groups(keys: &'static [Key]) -> impl Iterator<Item = ArgGroup> {
    let first = |i: usize, k: &Key| !keys[..i].iter().any(|o| o.field == k.field);
    keys.iter()
        .enumerate()
        .filter(move |(i, k)| first(*i, k))
        .filter_map(move |(_, k)| {
            let names: Vec<&str> = keys
                .iter()
                .filter(|o| o.field == k.field)
                .map(|o| o.name)
                .collect();
            (names.len() > 1).then(|| ArgGroup::new(format!("{}_setting", k.field)).args(names))
        })
}

/// The values clap read for a key's flag; `None`: not given.
pub fn given<K: Kind>(m: &ArgMatches, key: &str) -> Result<Option<Vec<K::Value>>, clap::Error> {
    let values = m
        .try_get_many::<K::Value>(key)
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
    Ok(values.map(|v| v.cloned().collect()))
}

/// Declares the configuration from its table, one row a setting: its doc
/// comment (the help), `FIELD [as KEY]: TYPE = DEFAULT, KIND [, clap tweak]`;
/// then after `[aliases]` other keys of settings above, `KEY => FIELD, KIND`.
/// See `mod.rs` for what it makes.
macro_rules! keys {
    (
        $( $(#[doc = $doc:literal])* $field:ident $(as $key:ident)?: $ty:ty = $default:expr,
            $kind:ty $(, $tweak:expr)?; )*
        [aliases]
        $( $(#[doc = $adoc:literal])* $akey:ident => $afield:ident, $akind:ty $(, $atweak:expr)?; )*
    ) => {
        /// Everything the agent needs to run, one field a setting (see the
        /// table in `config/mod.rs`, where each field's default is).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct AgentConfig {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for AgentConfig {
            /// Every setting at its default.
            fn default() -> AgentConfig {
                AgentConfig { $( $field: $default, )* }
            }
        }

        /// The values one layer gives for each key (`None`: not given); its
        /// flags as clap reads them.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Keys {
            $( $field: Option<Vec<<$kind as Kind>::Value>>, )*
            $( $akey: Option<Vec<<$akind as Kind>::Value>>, )*
        }

        /// Every key: the settings in table order, then the aliases.
        pub const KEYS: &[Key] = &[
            $( Key {
                // The row's `as KEY` if it has one, else the field's name.
                name: [$(stringify!($key),)? stringify!($field)][0],
                field: stringify!($field),
                list: <$kind as Kind>::LIST,
                help: concat!($($doc),*),
                sample: <$kind as Kind>::SAMPLE,
            }, )*
            $( Key {
                name: stringify!($akey),
                field: stringify!($afield),
                list: <$akind as Kind>::LIST,
                help: concat!($($adoc),*),
                sample: <$akind as Kind>::SAMPLE,
            }, )*
        ];

        impl Keys {
            /// Adds a value of the key `name` (one of [`KEYS`]).
            fn add(&mut self, name: &str, value: toml::Value) -> Result<(), (toml::Value, ValueError)> {
                $( if name == [$(stringify!($key),)? stringify!($field)][0] {
                    return keys::add::<$kind>(&mut self.$field, value);
                } )*
                $( if name == stringify!($akey) {
                    return keys::add::<$akind>(&mut self.$akey, value);
                } )*
                Ok(())
            }

            /// Lays these values over `config`; `set` hears each field they set.
            fn apply(self, config: &mut AgentConfig, mut set: impl FnMut(&'static str)) {
                $( if let Some(values) = self.$field {
                    if let Some(v) = Field::land(values) { config.$field = v; }
                    set(stringify!($field));
                } )*
                $( if let Some(values) = self.$akey {
                    if let Some(v) = Field::land(values) { config.$afield = v; }
                    set(stringify!($afield));
                } )*
            }
        }

        impl AgentConfig {
            /// Each setting's key and value as the file writes it (`None`:
            /// unset), in table order.
            pub fn shown(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                let values = [ $( Field::show(&self.$field, <$kind as Kind>::show), )* ];
                KEYS.iter().map(|k| k.name).zip(values).collect()
            }
        }

        impl clap::Args for Keys {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                let build: &[fn(&Key, Option<toml::Value>) -> clap::Arg] = &[
                    $( |key, default| {
                        let arg = keys::arg::<$kind>(key, default);
                        $( let arg = ($tweak)(arg); )?
                        arg
                    }, )*
                    $( |key, default| {
                        let arg = keys::arg::<$akind>(key, default);
                        $( let arg = ($atweak)(arg); )?
                        arg
                    }, )*
                ];
                let defaults = AgentConfig::default().shown().into_iter().map(|(_, v)| v);
                let defaults = defaults.chain(std::iter::repeat(None));
                let args = KEYS.iter().zip(build).zip(defaults).map(|((key, arg), default)| {
                    arg(key, default).display_order(keys::display_order(KEYS, key))
                });
                cmd.args(args).groups(keys::groups(KEYS))
            }
            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }

        impl clap::FromArgMatches for Keys {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Keys, clap::Error> {
                Ok(Keys {
                    $( $field: keys::given::<$kind>(m, [$(stringify!($key),)? stringify!($field)][0])?, )*
                    $( $akey: keys::given::<$akind>(m, stringify!($akey))?, )*
                })
            }
            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(m)?;
                Ok(())
            }
        }
    };
}
pub(crate) use keys;
