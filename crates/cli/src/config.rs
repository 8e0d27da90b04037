//! Configuration files for the services: `--config FILE` (TOML) under the
//! command's own flags.
//!
//! A key is a flag's long name (`listen`, `database-url`; `_` may stand for
//! `-`); a table joins its name to its keys' (`[tls] cert = …` is
//! `tls-cert`). Precedence, highest first: the flag, its environment
//! variable, the file, the built-in default. Every key is checked on start
//! against the flag's own parser, and an error names the key and the file.
//! Secrets (passphrases, PINs, tokens) are never values here, as they are
//! never flags: a file names the file that holds one (`km-passphrase-file`)
//! or the environment gives it.
//!
//! `cloister SERVICE config-example` prints every key of a service, with
//! its help, its environment variable and its default, from the same
//! definitions the flags come from.

use clap::builder::ValueRange;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag every service command has for its file.
pub const CONFIG_ARG: &str = "config";

/// Why the command line or the file cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// Clap's own error (usage, `--help`, `--version`): it prints itself.
    Clap(clap::Error),
    /// The configuration file is unreadable or wrong.
    File(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Clap(e) => write!(f, "{e}"),
            ConfigError::File(s) => f.write_str(s),
        }
    }
}

/// Words that make a key a secret (unless it names a file).
const SECRET_WORDS: [&str; 5] = ["passphrase", "password", "pin", "token", "secret"];

/// Whether a flag's long name would carry a secret's value (a file's
/// path or a label names one; it is not one).
pub fn is_secret_value(long: &str) -> bool {
    !long.ends_with("-file")
        && !long.ends_with("-label")
        && long.split('-').any(|w| SECRET_WORDS.contains(&w))
}

/// The service commands: each has `--config`, and every flag of theirs
/// an environment variable.
pub const SERVICES: [&[&str]; 5] = [
    &["km", "serve"],
    &["server"],
    &["vault", "serve"],
    &["witness", "serve"],
    &["inspect"],
];

/// Parse `argv` as `T`, with the values of `--config FILE` (or
/// `$CLOISTER_CONFIG`) under the command's flags.
pub fn parse<T: clap::Parser>(argv: Vec<OsString>) -> Result<T, ConfigError> {
    let cmd = command::<T>();
    let matches = matches_with_config(cmd, argv)?;
    T::from_arg_matches(&matches).map_err(ConfigError::Clap)
}

/// `T`'s command with an environment variable for every flag of a service
/// that has none of its own: `CLOISTER_` and the flag's long name
/// (`--metrics-listen`: `CLOISTER_METRICS_LISTEN`).
pub fn command<T: CommandFactory>() -> Command {
    SERVICES
        .iter()
        .fold(T::command(), |cmd, path| with_env_names(cmd, path))
}

/// The environment variable of a flag's long name.
pub fn env_name(long: &str) -> String {
    format!("CLOISTER_{}", long.to_uppercase().replace('-', "_"))
}

fn with_env_names(cmd: Command, path: &[&str]) -> Command {
    match path.split_first() {
        Some((head, rest)) if cmd.find_subcommand(head).is_some() => {
            cmd.mut_subcommand(head, |sub| with_env_names(sub, rest))
        }
        Some(_) => cmd,
        None => cmd.mut_args(|a| {
            let plain = a.get_env().is_none()
                && a.get_id() != CONFIG_ARG
                && !a.is_global_set()
                && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version);
            match a.get_long().map(env_name) {
                Some(name) if plain => a.env(name),
                _ => a,
            }
        }),
    }
}

fn matches_with_config(cmd: Command, argv: Vec<OsString>) -> Result<ArgMatches, ConfigError> {
    // A first look, forgiving missing values, to find the subcommand and
    // its --config.
    let first = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv.clone());
    let Ok(first) = first else {
        return cmd.try_get_matches_from(argv).map_err(ConfigError::Clap);
    };
    let mut path = Vec::new();
    let mut m = &first;
    while let Some((name, sub)) = m.subcommand() {
        path.push(name.to_owned());
        m = sub;
    }
    let file = m.try_get_one::<PathBuf>(CONFIG_ARG).ok().flatten().cloned();
    let Some(file) = file else {
        return cmd.try_get_matches_from(argv).map_err(ConfigError::Clap);
    };
    let values = load(&file)?;
    let leaf = find(&cmd, &path)
        .ok_or_else(|| ConfigError::File(format!("{}: no such command", path.join(" "))))?;
    let mut defaults = Vec::new();
    for (key, value) in values {
        let arg = leaf
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != CONFIG_ARG)
            .ok_or_else(|| {
                ConfigError::File(format!(
                    "{}: unknown key `{key}` for `cloister {}` (known: {})",
                    file.display(),
                    path.join(" "),
                    known_keys(leaf).join(", ")
                ))
            })?;
        if is_secret_value(&key) {
            return Err(ConfigError::File(format!(
                "{}: `{key}` is a secret: give it in a file or the environment, not here",
                file.display()
            )));
        }
        let strings = check(arg, &key, value)
            .map_err(|why| ConfigError::File(format!("{}: key `{key}`: {why}", file.display())))?;
        defaults.push((arg.get_id().as_str().to_owned(), strings));
    }
    let cmd = with_defaults(cmd, &path, &defaults);
    cmd.try_get_matches_from(argv).map_err(ConfigError::Clap)
}

fn find<'a>(cmd: &'a Command, path: &[String]) -> Option<&'a Command> {
    let mut c = cmd;
    for p in path {
        c = c.find_subcommand(p)?;
    }
    Some(c)
}

fn known_keys(cmd: &Command) -> Vec<String> {
    config_args(cmd)
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// The arguments a file may set: long flags other than help and the file.
fn config_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && a.get_id() != CONFIG_ARG
            && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
            && !a.is_global_set()
    })
}

/// Read a TOML file into `(key, value)` pairs, tables joined with `-`.
fn load(file: &Path) -> Result<Vec<(String, toml::Value)>, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::File(format!("cannot read {}: {e}", file.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::File(format!("{} is not valid TOML: {e}", file.display()))
    })?;
    let mut out = Vec::new();
    flatten("", table, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, table: toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.replace('_', "-")
        } else {
            format!("{prefix}-{}", k.replace('_', "-"))
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => out.push((key, v)),
        }
    }
}

fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            Err("expected a single value, not a list or table".into())
        }
    }
}

/// Check a file's value with the flag's own parser; the strings to give
/// clap as the flag's default.
fn check(arg: &Arg, key: &str, value: toml::Value) -> Result<Vec<String>, String> {
    let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    if flag {
        return match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            _ => Err("expected true or false".into()),
        };
    }
    let many = matches!(arg.get_action(), ArgAction::Append)
        || arg
            .get_num_args()
            .is_some_and(|r: ValueRange| r.max_values() > 1);
    let strings = match value {
        toml::Value::Array(items) if many => items.iter().map(scalar).collect::<Result<_, _>>()?,
        toml::Value::Array(_) => return Err("expected a single value, not a list".into()),
        v => vec![scalar(&v)?],
    };
    // The flag's own parser, alone in a command of its own.
    let probe = Arg::new("value")
        .long(key.to_owned())
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Append);
    let mut argv = vec![OsString::from("config")];
    for s in &strings {
        argv.push(format!("--{key}").into());
        argv.push(s.into());
    }
    Command::new("config")
        .arg(probe)
        .try_get_matches_from(argv)
        .map_err(|e| clap_reason(&e))?;
    Ok(strings)
}

/// Clap's complaint without its usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_owned()
}

fn with_defaults(cmd: Command, path: &[String], defaults: &[(String, Vec<String>)]) -> Command {
    match path.split_first() {
        Some((head, rest)) => cmd.mut_subcommand(head, |sub| with_defaults(sub, rest, defaults)),
        None => defaults.iter().fold(cmd, |cmd, (id, values)| {
            cmd.mut_arg(id, |a| {
                a.required(false)
                    .default_values(values.iter().map(|v| clap::builder::OsStr::from(v.clone())))
            })
        }),
    }
}

/// A commented example file for the command at `path` (`["server"]`,
/// `["km", "serve"]`): every key, commented out, with its help, its
/// environment variable and its default.
pub fn example<T: CommandFactory>(path: &[&str]) -> String {
    let mut root = command::<T>();
    root.build();
    let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
    let Some(cmd) = find(&root, &path) else {
        return String::new();
    };
    let mut out = format!(
        "# cloister {} --config FILE\n\
         # Every key is a flag's long name; the flag and its environment variable\n\
         # win over the file. Secrets are never here: name a file that holds one.\n",
        path.join(" ")
    );
    for a in config_args(cmd) {
        let Some(long) = a.get_long() else { continue };
        out.push('\n');
        if let Some(h) = a.get_help() {
            for line in wrap(&h.to_string(), 74) {
                out.push_str(&format!("# {line}\n"));
            }
        }
        if let Some(env) = a.get_env() {
            out.push_str(&format!("# environment: {}\n", env.to_string_lossy()));
        }
        let flag = matches!(a.get_action(), ArgAction::SetTrue);
        let many = matches!(a.get_action(), ArgAction::Append);
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let value = if flag {
            "false".to_owned()
        } else if many {
            "[]".to_owned()
        } else if let Some(d) = defaults.first() {
            toml_literal(d)
        } else {
            let name = a
                .get_value_names()
                .and_then(|n| n.first())
                .map(|n| n.to_string())
                .unwrap_or_else(|| long.to_uppercase());
            out.push_str("# (no default)\n");
            format!("\"{name}\"")
        };
        out.push_str(&format!("#{long} = {value}\n"));
    }
    out
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.lines() {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn toml_literal(s: &str) -> String {
    if s.parse::<i64>().is_ok() || s == "true" || s == "false" {
        s.to_owned()
    } else {
        toml::Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve {
            #[arg(long, env = "CONFIG_TEST_UNSET_LISTEN", default_value = "127.0.0.1:1")]
            listen: String,
            #[arg(long, default_value_t = 5)]
            refresh_secs: u64,
            #[arg(long)]
            fast: bool,
            #[arg(long = "witness")]
            witnesses: Vec<String>,
            #[arg(long)]
            required_thing: String,
            #[arg(long)]
            config: Option<PathBuf>,
        },
    }

    fn run(file: &str, extra: &[&str]) -> Result<Sub, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::File(e.to_string()))?;
        let p = dir.path().join("c.toml");
        std::fs::write(&p, file).map_err(|e| ConfigError::File(e.to_string()))?;
        let mut argv: Vec<OsString> = vec!["t".into(), "serve".into(), "--config".into()];
        argv.push(p.into_os_string());
        argv.extend(extra.iter().map(OsString::from));
        parse::<T>(argv).map(|t| t.cmd)
    }

    fn file_err(r: Result<Sub, ConfigError>) -> String {
        match r {
            Err(ConfigError::File(s)) => s,
            other => format!("not a file error: {other:?}"),
        }
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let r = run(
            "listen = \"0.0.0.0:9\"\nrefresh_secs = 7\nfast = true\nwitness = [\"a\", \"b\"]\nrequired-thing = \"x\"\n",
            &["--refresh-secs", "8"],
        );
        let Ok(Sub::Serve {
            listen,
            refresh_secs,
            fast,
            witnesses,
            required_thing,
            ..
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(listen, "0.0.0.0:9");
        assert_eq!(refresh_secs, 8, "the flag wins over the file");
        assert!(fast);
        assert_eq!(witnesses, ["a", "b"]);
        assert_eq!(
            required_thing, "x",
            "a required flag can come from the file"
        );
    }

    #[test]
    fn tables_join_their_names() {
        let r = run("required = { thing = \"y\" }\n", &[]);
        assert!(matches!(r, Ok(Sub::Serve { required_thing, .. }) if required_thing == "y"));
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let e = file_err(run(
            "refresh-secs = \"soon\"\nrequired-thing = \"x\"\n",
            &[],
        ));
        assert!(e.contains("c.toml") && e.contains("`refresh-secs`"), "{e}");
        let e = file_err(run("listn = \"x\"\n", &[]));
        assert!(
            e.contains("unknown key `listn`") && e.contains("listen"),
            "{e}"
        );
        let e = file_err(run("fast = \"yes\"\n", &[]));
        assert!(e.contains("`fast`") && e.contains("true or false"), "{e}");
        let e = file_err(run("listen = [\"a\"]\n", &[]));
        assert!(e.contains("`listen`") && e.contains("list"), "{e}");
        let e = file_err(run("listen = \n", &[]));
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn without_a_file_nothing_changes() {
        let argv: Vec<OsString> = ["t", "serve", "--required-thing", "z"]
            .iter()
            .map(OsString::from)
            .collect();
        let t = parse::<T>(argv);
        assert!(matches!(
            t,
            Ok(T {
                cmd: Sub::Serve {
                    refresh_secs: 5,
                    ..
                }
            })
        ));
    }

    #[test]
    fn secret_values_are_recognised() {
        assert!(is_secret_value("km-passphrase"));
        assert!(is_secret_value("operator-token"));
        assert!(is_secret_value("pin"));
        assert!(!is_secret_value("km-passphrase-file"));
        assert!(!is_secret_value("listen"));
        assert!(!is_secret_value("pinned"));
        assert!(!is_secret_value("pkcs11-token-label"));
        assert!(is_secret_value("pkcs11-pin"));
    }

    #[test]
    fn the_example_lists_every_key_commented() {
        let ex = example::<T>(&["serve"]);
        for k in [
            "#listen = \"127.0.0.1:1\"",
            "#refresh-secs = 5",
            "#fast = false",
            "#witness = []",
        ] {
            assert!(ex.contains(k), "{k} in\n{ex}");
        }
        assert!(ex.contains("# environment: CONFIG_TEST_UNSET_LISTEN"));
        assert!(!ex.contains("#config ="));
        // The example, uncommented, is itself a valid file.
        let uncommented: String = ex
            .lines()
            .filter(|l| l.starts_with('#') && l.contains(" = "))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        assert!(uncommented.parse::<toml::Table>().is_ok(), "{uncommented}");
    }
}
