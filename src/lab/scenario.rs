//! Scenarios: the steps a lab runs, from a TOML file, from a terminal, or
//! from a test.
//!
//! A scenario file names the regions and lists steps, one command each:
//!
//! ```toml
//! regions = ["us", "eu"]
//! steps = [
//!   "redis us HSET cart:alice apples 1",
//!   "partition us eu",
//!   "redis us HSET cart:alice apples 2",
//!   "redis eu HSET cart:alice pears 5",
//!   "heal",
//!   "wait-converged 30s",
//!   "expect eu HGET cart:alice pears => 5",
//! ]
//! ```
//!
//! [`COMMANDS`] lists every command.

use std::time::Duration;

use serde::Deserialize;

use super::workload::{Kind, Workload};

/// Every step command, as `geosync lab` prints it for `help`.
pub const COMMANDS: &str = include_str!("steps.txt");

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// The regions: a count, or their names.
    #[serde(default = "two_regions")]
    pub regions: Regions,
    /// Seed of the random writes (default: from the clock, printed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Extra redis-server arguments of every region.
    #[serde(default)]
    pub redis_args: Vec<String>,
    /// Extra `geosync run` arguments of every agent.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// The steps, one command each.
    pub steps: Vec<String>,
}

fn two_regions() -> Regions {
    Regions::Count(2)
}

/// How a scenario names its regions.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Regions {
    /// This many, named `1`, `2`, ...
    Count(usize),
    /// These names.
    Names(Vec<String>),
}

impl Regions {
    /// The region names.
    pub fn names(&self) -> Vec<String> {
        match self {
            Regions::Count(n) => (1..=*n).map(|i| i.to_string()).collect(),
            Regions::Names(v) => v.clone(),
        }
    }
}

/// A scenario that cannot run as written.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a scenario.
    #[error("{path} is not a scenario: {message}")]
    Toml {
        /// The file.
        path: String,
        /// What the TOML parser said.
        message: String,
    },
    /// The regions are not usable.
    #[error("regions: {0}")]
    Regions(String),
    /// A step is not a command the lab knows.
    #[error("step {number} `{text}`: {message}")]
    Step {
        /// Its number, from 1.
        number: usize,
        /// Its text.
        text: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ScenarioError::Toml {
            path: shown,
            message: e.to_string(),
        })
    }

    /// Checks the regions and parses every step.
    pub fn parse(&self) -> Result<Vec<Step>, ScenarioError> {
        let names = self.regions.names();
        check_names(&names)?;
        self.steps
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Step::parse(text, &names).map_err(|message| ScenarioError::Step {
                    number: i + 1,
                    text: text.clone(),
                    message,
                })
            })
            .collect()
    }
}

/// Checks a list of region names: 2 to 16, distinct, one word each.
pub fn check_names(names: &[String]) -> Result<(), ScenarioError> {
    if !(2..=16).contains(&names.len()) {
        return Err(ScenarioError::Regions(format!(
            "a lab has 2 to 16 regions, not {}",
            names.len()
        )));
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.contains(char::is_whitespace) || n == "->" {
            return Err(ScenarioError::Regions(format!(
                "{n:?} is not a region name (one word)"
            )));
        }
        if names[..i].contains(n) {
            return Err(ScenarioError::Regions(format!("{n:?} is named twice")));
        }
    }
    Ok(())
}

/// One step, with regions as positions (0-based).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run a Redis command and print the reply.
    Redis {
        /// Where.
        region: usize,
        /// The command and its arguments.
        args: Vec<String>,
    },
    /// Run a Redis command and fail unless the reply reads `expected`.
    Expect {
        /// Where.
        region: usize,
        /// The command and its arguments.
        args: Vec<String>,
        /// The reply as [`super::runner::reply_text`] shows it.
        expected: String,
    },
    /// Random writes.
    Write {
        /// Where.
        region: usize,
        /// What.
        workload: Workload,
    },
    /// Cut two regions apart.
    Partition(usize, usize),
    /// Bytes from the first region stop reaching the second.
    PartitionOneWay(usize, usize),
    /// Lose everything between two regions, connections open.
    Drop(usize, usize),
    /// Delay the bytes between two regions.
    Delay(usize, usize, Duration),
    /// Reset the connections between two regions once.
    Reset(usize, usize),
    /// Clear the faults between two regions, or all.
    Heal(Option<(usize, usize)>),
    /// Kill an agent.
    KillAgent(usize),
    /// Start an agent again.
    StartAgent(usize),
    /// Restart a Redis empty.
    RestartRedisEmpty(usize),
    /// Wait until every running agent is ready.
    WaitReady,
    /// Wait until a region's agent stamped every write made there so far.
    WaitStamped(usize, Duration),
    /// Wait until the regions converge.
    WaitConverged(Duration),
    /// Compare the regions once.
    Verify,
    /// Let time pass.
    Pause(Duration),
    /// Print a line.
    Echo(String),
}

/// Splits a step into words; double quotes group words, `\` escapes.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next().ok_or("a `\\` at the end")?);
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses `200ms`, `2s`, `1.5s`, `1m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (200ms, 2s, 1m)");
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))
        .ok_or_else(bad)?;
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn region(name: &str, names: &[String]) -> Result<usize, String> {
    names.iter().position(|n| n == name).ok_or_else(|| {
        format!(
            "no region named `{name}` (the regions are {})",
            names.join(", ")
        )
    })
}

fn two(args: &[String], names: &[String]) -> Result<(usize, usize), String> {
    match args {
        [a, b] => {
            let (a, b) = (region(a, names)?, region(b, names)?);
            if a == b {
                return Err("two different regions".into());
            }
            Ok((a, b))
        }
        _ => Err("names two regions: A B".into()),
    }
}

fn one(args: &[String], names: &[String]) -> Result<usize, String> {
    match args {
        [r] => region(r, names),
        _ => Err("names one region".into()),
    }
}

fn workload(args: &[String]) -> Result<Workload, String> {
    let mut w = Workload::default();
    let (ops, options) = args.split_first().ok_or("how many writes?")?;
    w.ops = ops
        .parse()
        .map_err(|_| format!("{ops:?} is not a number of writes"))?;
    for opt in options {
        let (name, value) = opt
            .split_once('=')
            .ok_or_else(|| format!("{opt:?} is not NAME=VALUE"))?;
        match name {
            "keys" => {
                w.keys = value
                    .parse()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or_else(|| format!("keys={value}: a positive number"))?
            }
            "prefix" => w.prefix = value.to_string(),
            "types" => {
                w.kinds = value
                    .split(',')
                    .map(|t| Kind::parse(t).ok_or_else(|| format!("no write type {t:?}")))
                    .collect::<Result<_, _>>()?
            }
            "ttl" => {
                let (lo, hi) = value.split_once("..").unwrap_or((value, value));
                let ms = |d: &str| duration(d).map(|d| d.as_millis() as u64);
                w.ttl_ms = (ms(lo)?, ms(hi)?);
                if w.ttl_ms.0 == 0 || w.ttl_ms.0 > w.ttl_ms.1 {
                    return Err(format!("ttl={value}: LO..HI with 0 < LO <= HI"));
                }
            }
            _ => {
                return Err(format!(
                    "no write option {name:?} (keys, types, prefix, ttl)"
                ));
            }
        }
    }
    Ok(w)
}

impl Step {
    /// Parses one step against the region names.
    pub fn parse(text: &str, names: &[String]) -> Result<Step, String> {
        let w = words(text)?;
        let (cmd, args) = w.split_first().ok_or("an empty step")?;
        Ok(match cmd.as_str() {
            "redis" => {
                let (r, rest) = args.split_first().ok_or("redis R CMD ARG...")?;
                if rest.is_empty() {
                    return Err("redis R CMD ARG...: no command".into());
                }
                Step::Redis {
                    region: region(r, names)?,
                    args: rest.to_vec(),
                }
            }
            "expect" => {
                let (r, rest) = args.split_first().ok_or("expect R CMD ARG... => REPLY")?;
                let at = rest
                    .iter()
                    .position(|a| a == "=>")
                    .ok_or("expect R CMD ARG... => REPLY: no `=>`")?;
                if at == 0 {
                    return Err("expect R CMD ARG... => REPLY: no command".into());
                }
                Step::Expect {
                    region: region(r, names)?,
                    args: rest[..at].to_vec(),
                    expected: rest[at + 1..].join(" "),
                }
            }
            "write" => {
                let (r, rest) = args.split_first().ok_or("write R N [options]")?;
                Step::Write {
                    region: region(r, names)?,
                    workload: workload(rest)?,
                }
            }
            "partition" => match args {
                [a, arrow, b] if arrow == "->" => {
                    let (a, b) = two(&[a.clone(), b.clone()], names)?;
                    Step::PartitionOneWay(a, b)
                }
                _ => {
                    let (a, b) = two(args, names)?;
                    Step::Partition(a, b)
                }
            },
            "drop" => {
                let (a, b) = two(args, names)?;
                Step::Drop(a, b)
            }
            "delay" => match args {
                [a, b, d] => {
                    let (a, b) = two(&[a.clone(), b.clone()], names)?;
                    Step::Delay(a, b, duration(d)?)
                }
                _ => return Err("delay A B DURATION".into()),
            },
            "reset" => {
                let (a, b) = two(args, names)?;
                Step::Reset(a, b)
            }
            "heal" if args.is_empty() => Step::Heal(None),
            "heal" => Step::Heal(Some(two(args, names)?)),
            "kill-agent" => Step::KillAgent(one(args, names)?),
            "start-agent" => Step::StartAgent(one(args, names)?),
            "restart-redis-empty" => Step::RestartRedisEmpty(one(args, names)?),
            "wait-ready" if args.is_empty() => Step::WaitReady,
            "wait-stamped" => match args {
                [r] => Step::WaitStamped(region(r, names)?, Duration::from_secs(10)),
                [r, d] => Step::WaitStamped(region(r, names)?, duration(d)?),
                _ => return Err("wait-stamped R [DURATION]".into()),
            },
            "wait-converged" => match args {
                [] => Step::WaitConverged(Duration::from_secs(30)),
                [d] => Step::WaitConverged(duration(d)?),
                _ => return Err("wait-converged [DURATION]".into()),
            },
            "verify" if args.is_empty() => Step::Verify,
            "pause" => match args {
                [d] => Step::Pause(duration(d)?),
                _ => return Err("pause DURATION".into()),
            },
            "echo" => Step::Echo(args.join(" ")),
            other => {
                return Err(format!(
                    "`{other}` is not a lab command (or its arguments are wrong); the commands:\n{COMMANDS}"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["us".into(), "eu".into(), "ap".into()]
    }

    #[test]
    fn steps_parse() {
        let n = names();
        assert_eq!(
            Step::parse("redis us SET \"a key\" v\\\"1", &n).unwrap(),
            Step::Redis {
                region: 0,
                args: vec!["SET".into(), "a key".into(), "v\"1".into()]
            }
        );
        assert_eq!(
            Step::parse("partition eu -> ap", &n).unwrap(),
            Step::PartitionOneWay(1, 2)
        );
        assert_eq!(
            Step::parse("partition eu ap", &n).unwrap(),
            Step::Partition(1, 2)
        );
        assert_eq!(
            Step::parse("delay us ap 200ms", &n).unwrap(),
            Step::Delay(0, 2, Duration::from_millis(200))
        );
        assert_eq!(
            Step::parse("wait-converged 1m", &n).unwrap(),
            Step::WaitConverged(Duration::from_secs(60))
        );
        assert_eq!(
            Step::parse("expect eu HGET cart apples => 3", &n).unwrap(),
            Step::Expect {
                region: 1,
                args: vec!["HGET".into(), "cart".into(), "apples".into()],
                expected: "3".into()
            }
        );
        let Step::Write { region, workload } =
            Step::parse("write ap 500 keys=20 types=counter,session ttl=1s..2s", &n).unwrap()
        else {
            panic!("not a write")
        };
        assert_eq!(region, 2);
        assert_eq!(workload.ops, 500);
        assert_eq!(workload.keys, 20);
        assert_eq!(workload.kinds, vec![Kind::Counter, Kind::Session]);
        assert_eq!(workload.ttl_ms, (1000, 2000));
    }

    #[test]
    fn bad_steps_say_what_is_wrong() {
        let n = names();
        let err = |s: &str| Step::parse(s, &n).unwrap_err();
        assert!(err("partition us asia").contains("no region named `asia`"));
        assert!(err("partition us us").contains("two different regions"));
        assert!(err("delay us eu soon").contains("not a duration"));
        assert!(err("write us many").contains("not a number of writes"));
        assert!(err("write us 5 types=blob").contains("no write type"));
        assert!(err("expect us GET k").contains("no `=>`"));
        assert!(err("redis us \"open").contains("quote"));
        assert!(err("fly us").contains("not a lab command"));
    }

    #[test]
    fn a_scenario_with_a_bad_step_names_its_number() {
        let s: Scenario =
            toml::from_str("regions = [\"a\", \"b\"]\nsteps = [\"verify\", \"heal a c\"]").unwrap();
        let e = s.parse().unwrap_err().to_string();
        assert!(
            e.starts_with("step 2 `heal a c`: no region named `c`"),
            "{e}"
        );
        let s: Scenario = toml::from_str("regions = [\"a\", \"a\"]\nsteps = []").unwrap();
        assert!(s.parse().unwrap_err().to_string().contains("named twice"));
        let s: Scenario = toml::from_str("regions = 1\nsteps = []").unwrap();
        assert!(s.parse().unwrap_err().to_string().contains("2 to 16"));
    }
}
