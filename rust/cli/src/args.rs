//! A small command-line parser: `--flag VALUE`, `--flag=VALUE`, switches (`--pairs`), positional
//! arguments, `--help`/`-h` anywhere, and `--` to end the flags. Every mistake is a usage error
//! naming the flag; nothing here panics.

use std::str::FromStr;

/// A flag a command accepts.
pub struct Flag {
    /// Without the leading `--`.
    pub name: &'static str,
    /// Whether it takes a value (`--speed 0.5`) or is a switch (`--pairs`).
    pub takes_value: bool,
}

impl Flag {
    pub const fn value(name: &'static str) -> Self {
        Flag {
            name,
            takes_value: true,
        }
    }

    pub const fn switch(name: &'static str) -> Self {
        Flag {
            name,
            takes_value: false,
        }
    }
}

/// The parsed command line of one command.
#[derive(Debug, Default)]
pub struct Parsed {
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
    pub positionals: Vec<String>,
    pub help: bool,
}

/// Parses `args` (the arguments after the command name) against `flags`. A flag given twice is an
/// error, so that a typo in a long command line cannot silently win or lose.
pub fn parse(args: &[String], flags: &[Flag]) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.positionals.extend(iter.by_ref().cloned());
            break;
        }
        if arg == "--help" || arg == "-h" {
            out.help = true;
            continue;
        }
        let Some(body) = arg.strip_prefix("--") else {
            if arg.len() > 1 && arg.starts_with('-') && arg.parse::<f64>().is_err() {
                return Err(format!("unknown option '{arg}'"));
            }
            out.positionals.push(arg.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            return Err(format!("unknown option '--{name}'"));
        };
        if out.values.iter().any(|(n, _)| *n == flag.name) || out.switches.contains(&flag.name) {
            return Err(format!("option '--{name}' is given more than once"));
        }
        if flag.takes_value {
            let value = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("option '--{name}' needs a value"))?,
            };
            out.values.push((flag.name, value));
        } else {
            if inline.is_some() {
                return Err(format!("option '--{name}' takes no value"));
            }
            out.switches.push(flag.name);
        }
    }
    Ok(out)
}

impl Parsed {
    /// The raw value of `--name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    /// The value of `--name` parsed as `T`; `expected` describes a valid value for the error.
    pub fn get<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, String> {
        match self.value(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|_| format!("--{name}: expected {expected}, got '{v}'")),
        }
    }

    /// Exactly the positional arguments named in `names`, in order.
    pub fn positionals(&self, names: &[&str]) -> Result<Vec<&str>, String> {
        if self.positionals.len() < names.len() {
            return Err(format!(
                "missing argument {}",
                names[self.positionals.len()]
            ));
        }
        if let Some(extra) = self.positionals.get(names.len()) {
            return Err(format!("unexpected argument '{extra}'"));
        }
        Ok(self.positionals.iter().map(String::as_str).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[Flag::value("speed"), Flag::switch("pairs")];

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn values_switches_and_positionals() {
        let p = parse(&args(&["b", "--speed", "0.5", "--pairs"]), FLAGS).unwrap();
        assert_eq!(p.positionals(&["BUNDLE"]).unwrap(), vec!["b"]);
        assert_eq!(p.get::<f32>("speed", "a number").unwrap(), Some(0.5));
        assert!(p.switch("pairs"));
        let p = parse(&args(&["--speed=1", "--", "--pairs"]), FLAGS).unwrap();
        assert_eq!(p.value("speed"), Some("1"));
        assert_eq!(p.positionals, vec!["--pairs"]);
        assert!(parse(&args(&["-h"]), FLAGS).unwrap().help);
        // A negative number is a value, not an option.
        let p = parse(&args(&["--speed", "-1"]), FLAGS).unwrap();
        assert_eq!(p.value("speed"), Some("-1"));
    }

    #[test]
    fn errors() {
        let e = |a: &[&str]| parse(&args(a), FLAGS).unwrap_err();
        assert!(e(&["--sped", "1"]).contains("--sped"));
        assert!(e(&["--speed"]).contains("needs a value"));
        assert!(e(&["--speed", "1", "--speed", "2"]).contains("more than once"));
        assert!(e(&["--pairs=1"]).contains("takes no value"));
        assert!(e(&["-x"]).contains("-x"));
        let p = parse(&args(&["--speed", "fast"]), FLAGS).unwrap();
        assert!(p
            .get::<f32>("speed", "a number")
            .unwrap_err()
            .contains("fast"));
        let p = parse(&args(&["a", "b"]), FLAGS).unwrap();
        assert!(p.positionals(&["BUNDLE"]).unwrap_err().contains("'b'"));
        assert!(p
            .positionals(&["A", "B", "C"])
            .unwrap_err()
            .contains("missing argument C"));
    }
}
