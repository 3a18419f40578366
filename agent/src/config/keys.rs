//! The machinery of the key table in `mod.rs`. `keys!` makes each row's
//! [`AgentConfig`] field and default and its [`Key`], whose functions are the
//! row's typed parts (its flag, reading a value into the field, showing the
//! field), so that the layers, `--help` and the printers walk [`KEYS`] and
//! never name a setting.

use crate::config::allow::{AllowList, AllowTarget};
use crate::config::source::Source;
use crate::config::values::{Kind, ValueError};
use crate::config::{AgentConfig, KEYS};
use clap::{Arg, ArgAction, ArgGroup, ArgMatches, Command};
use toml::Value as Toml;

/// Lays a value of a key over a configuration, added to the layer's earlier
/// ones if `true`; else the value (a list's element) that failed, and why.
pub type Read = fn(&mut AgentConfig, Toml, bool) -> Result<(), (Toml, ValueError)>;

/// One key, as the layers, the flags and the shipped file know it.
pub struct Key {
    /// The key as the file spells it (the flag: `--` and `-` for `_`; the
    /// kernel command line: `sockfwd.` before it).
    pub name: &'static str,
    /// The [`AgentConfig`] field it sets; a layer gives one key of a setting.
    pub field: &'static str,
    /// Another key of a setting above it (a row after `[aliases]`).
    pub alias: bool,
    /// Repeatable: a layer's values add up, and replace earlier layers' list.
    pub list: bool,
    /// Its help: the row's doc comment.
    pub help: &'static str,
    /// A value of its kind that no default has (the shipped file's examples).
    pub sample: &'static str,
    /// Its flag, typed by its kind ([`Flags`] adds the help).
    pub arg: fn() -> Arg,
    /// Lays a value of the file or the kernel command line over a configuration.
    pub read: Read,
    /// Lays its flag's values over a configuration; `false`: not given.
    pub flag: fn(&mut AgentConfig, &ArgMatches) -> bool,
    /// Its setting's value as the file writes it; `None`: unset.
    pub show: fn(&AgentConfig) -> Option<Toml>,
}

/// How a key's values land in its field (the last one, `Some` of it, or all
/// of them, after the layer's earlier ones if `add`), and how it shows.
pub trait Field<T> {
    /// Lays values of one key over the field.
    fn land(&mut self, values: Vec<T>, add: bool);
    /// The field as the file writes it; `None`: unset.
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml>;
}

impl<T> Field<T> for T {
    fn land(&mut self, values: Vec<T>, _: bool) {
        values.into_iter().for_each(|v| *self = v);
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        Some(show(self))
    }
}

impl<T> Field<T> for Option<T> {
    fn land(&mut self, values: Vec<T>, _: bool) {
        values.into_iter().for_each(|v| *self = Some(v));
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        self.as_ref().map(show)
    }
}

impl<T> Field<T> for Vec<T> {
    fn land(&mut self, values: Vec<T>, add: bool) {
        if !add {
            self.clear();
        }
        self.extend(values);
    }
    fn show(&self, show: fn(&T) -> Toml) -> Option<Toml> {
        Some(Toml::Array(self.iter().map(show).collect()))
    }
}

impl Field<AllowTarget> for AllowList {
    fn land(&mut self, values: Vec<AllowTarget>, add: bool) {
        self.0.land(values, add);
    }
    fn show(&self, show: fn(&AllowTarget) -> Toml) -> Option<Toml> {
        self.0.show(show)
    }
}

/// [`Key::read`] for a key of kind `K`: a list key's array is each element.
pub fn read<K: Kind>(
    field: &mut impl Field<K::Value>,
    value: Toml,
    add: bool,
) -> Result<(), (Toml, ValueError)> {
    let items = match value {
        Toml::Array(items) if K::LIST => items,
        one => vec![one],
    };
    let values = items
        .into_iter()
        .map(|item| K::read(item.clone()).map_err(|e| (item, e)));
    field.land(values.collect::<Result<_, _>>()?, add);
    Ok(())
}

/// [`Key::flag`] for the flag `name` of kind `K` (also `false` where `m` has
/// no such flag: a test's empty flags).
pub fn flag<K: Kind>(field: &mut impl Field<K::Value>, m: &ArgMatches, name: &str) -> bool {
    let values = m.try_get_many::<K::Value>(name).ok().flatten();
    values
        .map(|v| field.land(v.cloned().collect(), false))
        .is_some()
}

/// [`Key::arg`] for the key `name` of kind `K`: `--NAME` with `-` for `_`; a
/// value `K` refuses is worded as the other layers word it.
pub fn arg<K: Kind>(name: &'static str) -> Arg {
    let parse =
        move |s: &str| K::parse(s).map_err(|e| Source::Flag.bad(name, format!("{s:?}"), &e));
    let action = if K::LIST {
        ArgAction::Append
    } else {
        ArgAction::Set
    };
    let arg = Arg::new(name)
        .long(name.replace('_', "-"))
        .value_name(K::NAME);
    arg.value_parser(parse).action(action)
}

/// The configuration keys given as flags, as clap read them: each value
/// typed by its key's kind, taken out by its [`Key::flag`].
#[derive(Debug, Clone, Default)]
pub struct Flags(pub ArgMatches);

impl clap::Args for Flags {
    fn augment_args(mut cmd: Command) -> Command {
        let defaults = AgentConfig::default();
        for (i, key) in KEYS.iter().enumerate() {
            // An unset default or an empty list goes unsaid: the help says it.
            let default = match (!key.alias).then(|| (key.show)(&defaults)).flatten() {
                Some(Toml::String(s)) => format!(" [default: {s}]"),
                Some(v @ (Toml::Integer(_) | Toml::Boolean(_))) => format!(" [default: {v}]"),
                _ => String::new(),
            };
            let names = KEYS.iter().filter(|k| k.field == key.field).map(|k| k.name);
            if !key.alias && names.clone().count() > 1 {
                // One layer gives at most one key of a setting.
                let group = ArgGroup::new(format!("{}_setting", key.field)).args(names);
                cmd = cmd.group(group);
            }
            // After `Cli`'s own flags; each setting's other keys right after it.
            let setting = KEYS.iter().position(|k| k.field == key.field).unwrap_or(i);
            let help = format!("{}{default}", key.help.trim());
            let order = 100 + setting * KEYS.len() + i;
            cmd = cmd.arg((key.arg)().help(help).display_order(order));
        }
        cmd
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Flags, clap::Error> {
        Ok(Flags(m.clone()))
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = m.clone();
        Ok(())
    }
}

/// Declares the configuration from its table, one row a setting: its doc
/// comment (the help), `FIELD [as KEY]: TYPE = DEFAULT, KIND [, clap tweak]`;
/// then after `[aliases]` other keys of settings above, `KEY => FIELD, KIND`.
macro_rules! keys {
    (
        $( $(#[doc = $doc:literal])* $field:ident $(as $key:ident)?: $ty:ty = $default:expr,
            $kind:ty $(, $tweak:expr)?; )*
        [aliases]
        $( $(#[doc = $adoc:literal])* $akey:ident => $afield:ident, $akind:ty $(, $atweak:expr)?; )*
    ) => {
        /// Everything the agent needs to run, one field a setting (each
        /// default is in the table in `config/mod.rs`).
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

        /// Every key: the settings in table order, then the aliases.
        pub const KEYS: &[Key] = &[
            // A row's key is its `as KEY`, else its field's name: the first.
            $( keys!(@key [$($key)? $field] $field, false, $kind, [$($doc)*] $(, $tweak)?), )*
            $( keys!(@key [$akey] $afield, true, $akind, [$($adoc)*] $(, $atweak)?), )*
        ];
    };
    (@key [$key:ident $($_field:ident)?] $field:ident, $alias:expr, $kind:ty, [$($doc:literal)*]
        $(, $tweak:expr)?) => {
        Key {
            name: stringify!($key),
            field: stringify!($field),
            alias: $alias,
            list: <$kind as Kind>::LIST,
            help: concat!($($doc),*),
            sample: <$kind as Kind>::SAMPLE,
            arg: || {
                let arg = keys::arg::<$kind>(stringify!($key));
                $( let arg = ($tweak)(arg); )?
                arg
            },
            read: |config, value, add| keys::read::<$kind>(&mut config.$field, value, add),
            flag: |config, m| keys::flag::<$kind>(&mut config.$field, m, stringify!($key)),
            show: |config| keys::Field::show(&config.$field, <$kind as Kind>::show),
        }
    };
}
pub(crate) use keys;
