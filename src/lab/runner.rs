//! Runs scenario steps on a mesh: the `geosync lab` command and its
//! library form for tests.

use std::io::BufRead;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::env::now_ms;
use super::mesh::{Mesh, report};
use super::redis::{Redis, redis_server_bin};
use super::scenario::{COMMANDS, Regions, Scenario, ScenarioError, Step, check_names, words};

/// `geosync lab`: start local regions and run a scenario in them.
#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Scenario steps (a TOML file's `steps`, or lines on standard input):\n\n",
    include_str!("steps.txt")
))]
pub struct LabArgs {
    /// A scenario file (TOML: regions, steps). Without one, the lab starts
    /// the regions, prints their addresses and reads steps from standard
    /// input until `quit` or end of input.
    pub scenario: Option<PathBuf>,
    /// Regions when no scenario names them: a count, or names separated
    /// by commas (`us,eu,ap`).
    #[arg(long, default_value = "2")]
    pub regions: String,
    /// The redis-server binary every region runs.
    #[arg(long, env = "GEOSYNC_LAB_REDIS_SERVER")]
    pub redis_server: Option<String>,
    /// Seed of the random writes (default: the scenario's, else the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Check the scenario and start nothing.
    #[arg(long)]
    pub check: bool,
}

/// Exit code: every step passed and the regions converged.
pub const PASSED: i32 = 0;
/// Exit code: a step failed or the regions differ (a report says how).
pub const FAILED: i32 = 1;
/// Exit code: the scenario or the command line is wrong.
pub const UNUSABLE: i32 = 2;

/// Runs `geosync lab`; the process exit code.
pub fn main(args: LabArgs) -> i32 {
    match try_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("geosync lab: {e}");
            UNUSABLE
        }
    }
}

fn try_main(args: LabArgs) -> Result<i32, ScenarioError> {
    let scenario = match &args.scenario {
        Some(path) => Some(Scenario::load(path)?),
        None => None,
    };
    let (names, steps, redis_args, agent_args, seed) = match &scenario {
        Some(s) => (
            s.regions.names(),
            Some(s.parse()?),
            s.redis_args.clone(),
            s.agent_args.clone(),
            args.seed.or(s.seed),
        ),
        None => {
            let regions = match args.regions.parse::<usize>() {
                Ok(n) => Regions::Count(n),
                Err(_) => Regions::Names(args.regions.split(',').map(str::to_string).collect()),
            };
            let names = regions.names();
            check_names(&names)?;
            (names, None, vec![], vec![], args.seed)
        }
    };
    if args.check {
        println!("the scenario is well formed");
        return Ok(PASSED);
    }
    let bin = args.redis_server.clone().unwrap_or_else(redis_server_bin);
    if std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(ScenarioError::Regions(format!(
            "cannot run the Redis server `{bin}`: install redis-server, or pass --redis-server PATH"
        )));
    }
    // Step failures are reported, not dumped as panics.
    std::panic::set_hook(Box::new(|_| {}));
    let seed = seed.unwrap_or_else(|| now_ms() as u64);
    let mut lab = Lab::start(&names, seed, |b| b.bin(&bin).args(&redis_args), &agent_args)?;
    if let Some(path) = &args.scenario {
        lab.scenario = path.display().to_string();
    }
    lab.print_regions();
    Ok(match steps {
        Some(steps) => {
            let texts = scenario.map(|s| s.steps).unwrap_or_default();
            match lab.run(&steps, &texts) {
                Ok(()) => PASSED,
                Err(failure) => {
                    println!("\n{failure}");
                    FAILED
                }
            }
        }
        None => {
            lab.interactive();
            PASSED
        }
    })
}

/// A step that failed, with what the lab saw then.
#[derive(Debug)]
pub struct Failure {
    /// The step's number (from 1; past the last for the final check).
    pub number: usize,
    /// Its text.
    pub text: String,
    /// What went wrong, with the differences when regions differ.
    pub message: String,
    /// Faults in force at that moment.
    pub faults: Vec<String>,
    /// The replay line.
    pub replay: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "FAILED at step {} `{}`:", self.number, self.text)?;
        writeln!(f, "{}", self.message)?;
        if !self.faults.is_empty() {
            writeln!(f, "faults in force:\n  {}", self.faults.join("\n  "))?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// Local regions and the seed of their random writes.
pub struct Lab {
    /// The regions, proxied so that faults work.
    pub mesh: Mesh,
    /// Seed of the random writes.
    pub seed: u64,
    /// What the replay line names as the scenario.
    pub scenario: String,
    rng: StdRng,
}

/// The text a reply reads as in `expect`: `(nil)`, `OK`, numbers, strings,
/// `[a, b]` for arrays.
pub fn reply_text(v: &redis::Value) -> String {
    use redis::Value as V;
    match v {
        V::Nil => "(nil)".into(),
        V::Okay => "OK".into(),
        V::Int(n) => n.to_string(),
        V::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        V::SimpleString(s) => s.clone(),
        V::Double(d) => d.to_string(),
        V::Boolean(b) => b.to_string(),
        V::Array(a) | V::Set(a) => {
            format!(
                "[{}]",
                a.iter().map(reply_text).collect::<Vec<_>>().join(", ")
            )
        }
        V::Map(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", reply_text(k), reply_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        V::ServerError(e) => format!("(error) {}", e.details().unwrap_or(e.code())),
        other => format!("{other:?}"),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a step failed".into())
}

impl Lab {
    /// Starts regions named `names` (node ids in that order), each Redis
    /// from `redis(builder)`, each agent with `agent_args`, all linked
    /// through fault-injecting proxies, and waits until they are ready.
    pub fn start(
        names: &[String],
        seed: u64,
        redis: impl FnOnce(super::redis::RedisBuilder) -> super::redis::RedisBuilder,
        agent_args: &[String],
    ) -> Result<Lab, ScenarioError> {
        check_names(names)?;
        let builder = redis(Redis::builder());
        let mesh = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Mesh::builder(names.len())
                .names(names)
                .redis(builder)
                .agent_args(agent_args)
                .proxied()
                .start()
        }))
        .map_err(|p| {
            ScenarioError::Regions(format!("the regions did not start: {}", panic_text(p)))
        })?;
        Ok(Lab {
            mesh,
            seed,
            scenario: "SCENARIO".into(),
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// Prints each region's addresses.
    pub fn print_regions(&self) {
        println!(
            "geosync lab: {} regions, seed {}",
            self.mesh.regions.len(),
            self.seed
        );
        for r in &self.mesh.regions {
            println!(
                "  {:<8} node {}  redis {}  agent peers :{}  admin http://127.0.0.1:{}/metrics  log {}",
                r.name,
                r.agent.node_id,
                r.redis.url(),
                r.agent.listen,
                r.agent.admin,
                r.agent.log.display()
            );
        }
    }

    /// Parses `texts` as steps against this lab's region names and runs
    /// them (see [`Lab::run`]); a step that does not parse is a failure.
    pub fn run_texts(&mut self, texts: &[&str]) -> Result<(), Failure> {
        let names: Vec<String> = self.mesh.regions.iter().map(|r| r.name.clone()).collect();
        let mut steps = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let step = Step::parse(text, &names).map_err(|message| Failure {
                number: i + 1,
                text: text.to_string(),
                message,
                faults: Vec::new(),
                replay: format!("seed {}", self.seed),
            })?;
            steps.push(step);
        }
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        self.run(&steps, &texts)
    }

    /// Runs every step, then, unless the last step compared the regions,
    /// waits up to 30 s for them to converge.
    pub fn run(&mut self, steps: &[Step], texts: &[String]) -> Result<(), Failure> {
        for (i, step) in steps.iter().enumerate() {
            let text = texts.get(i).cloned().unwrap_or_else(|| format!("{step:?}"));
            self.step_numbered(i + 1, &text, step)?;
        }
        if !matches!(steps.last(), Some(Step::Verify | Step::WaitConverged(_))) {
            let step = Step::WaitConverged(Duration::from_secs(30));
            self.step_numbered(
                steps.len() + 1,
                "wait-converged 30s (the final check)",
                &step,
            )?;
        }
        println!("PASSED: every step held and the regions converged");
        Ok(())
    }

    fn step_numbered(&mut self, number: usize, text: &str, step: &Step) -> Result<(), Failure> {
        let start = Instant::now();
        println!("[{number}] {text}");
        match self.step(step) {
            Ok(said) => {
                for line in said.lines() {
                    println!("    {line}");
                }
                println!("    ok ({:.2?})", start.elapsed());
                Ok(())
            }
            Err(message) => Err(Failure {
                number,
                text: text.to_string(),
                message,
                faults: self.mesh.faults(),
                replay: format!("geosync lab {} --seed {}", self.scenario, self.seed),
            }),
        }
    }

    /// Runs one step; what it has to say, or why it failed.
    pub fn step(&mut self, step: &Step) -> Result<String, String> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.try_step(step)))
            .unwrap_or_else(|p| Err(panic_text(p)))
    }

    fn command(&self, region: usize, args: &[String]) -> Result<redis::Value, String> {
        let mut c = self.mesh.regions[region]
            .redis
            .client()
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("region {}: {e}", self.mesh.regions[region].name))?;
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        match cmd.query::<redis::Value>(&mut c) {
            Ok(v) => Ok(v),
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                Ok(redis::Value::SimpleString(format!("(error) {e}")))
            }
            Err(e) => Err(format!("{}: {e}", args.join(" "))),
        }
    }

    fn try_step(&mut self, step: &Step) -> Result<String, String> {
        let name = |i: usize| self.mesh.regions[i].name.clone();
        Ok(match step {
            Step::Redis { region, args } => reply_text(&self.command(*region, args)?),
            Step::Expect {
                region,
                args,
                expected,
            } => {
                let got = reply_text(&self.command(*region, args)?);
                if got != *expected {
                    return Err(format!(
                        "region {} answered {got:?} to `{}`, not {expected:?}",
                        name(*region),
                        args.join(" ")
                    ));
                }
                got
            }
            Step::Write { region, workload } => {
                let mut c = self.mesh.regions[*region].redis.conn();
                let n = workload
                    .run(&mut c, &mut self.rng)
                    .map_err(|e| format!("writing in {}: {e}", name(*region)))?;
                format!("{n} writes in {}", name(*region))
            }
            Step::Partition(a, b) => {
                self.mesh.partition(*a, *b);
                String::new()
            }
            Step::PartitionOneWay(a, b) => {
                self.mesh.partition_one_way(*a, *b);
                String::new()
            }
            Step::Drop(a, b) => {
                self.mesh.blackhole(*a, *b);
                String::new()
            }
            Step::Delay(a, b, d) => {
                self.mesh.delay(*a, *b, *d);
                String::new()
            }
            Step::Reset(a, b) => {
                self.mesh.reset(*a, *b);
                String::new()
            }
            Step::Heal(None) => {
                self.mesh.heal_all();
                String::new()
            }
            Step::Heal(Some((a, b))) => {
                self.mesh.heal(*a, *b);
                String::new()
            }
            Step::KillAgent(r) => {
                self.mesh.kill_agent(*r);
                String::new()
            }
            Step::StartAgent(r) => {
                self.mesh.restart_agent(*r);
                String::new()
            }
            Step::RestartRedisEmpty(r) => {
                self.mesh.restart_redis_empty(*r);
                String::new()
            }
            Step::WaitReady => {
                self.mesh.wait_ready();
                String::new()
            }
            Step::WaitStamped(r, d) => {
                let took = self.mesh.wait_stamped(*r, *d);
                format!("{} stamped everything in {took:.2?}", name(*r))
            }
            Step::WaitConverged(d) => {
                let dbs = self.mesh.databases_in_use();
                match self.mesh.converge(&dbs, *d) {
                    Ok((took, look)) => {
                        let mut s = format!(
                            "converged in {took:.2?}: {} keys compared in databases {dbs:?}",
                            look.keys
                        );
                        if !look.expiring.is_empty() {
                            s.push_str(&format!(
                                "; {} keys about to expire excused:\n  {}",
                                look.expiring.len(),
                                look.expiring.join("\n  ")
                            ));
                        }
                        s.push('\n');
                        s.push_str(&self.counts());
                        s
                    }
                    Err(look) => {
                        return Err(format!(
                            "the regions did not converge within {d:?}: {}",
                            report(&look)
                        ));
                    }
                }
            }
            Step::Verify => {
                let dbs = self.mesh.databases_in_use();
                let look = self.mesh.look(&dbs);
                if !look.differences.is_empty() {
                    return Err(format!("the regions differ: {}", report(&look)));
                }
                format!("the regions agree: {} keys compared", look.keys)
            }
            Step::Pause(d) => {
                std::thread::sleep(*d);
                String::new()
            }
            Step::Echo(text) => text.clone(),
        })
    }

    /// Per region: changes stamped, applied, and rejected as older.
    fn counts(&self) -> String {
        self.mesh
            .regions
            .iter()
            .map(|r| {
                let m = |n: &str| r.agent.try_metric(n).unwrap_or(0.0);
                format!(
                    "{}: stamped {}, applied {}, rejected as older {}",
                    r.name,
                    m("geosync_changes_stamped_total"),
                    m("geosync_changes_applied_total"),
                    m("geosync_changes_rejected_older_total")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads steps from standard input until `quit` or its end; a step
    /// that fails is reported and the lab goes on.
    pub fn interactive(&mut self) {
        let names: Vec<String> = self.mesh.regions.iter().map(|r| r.name.clone()).collect();
        println!("type steps (`help` lists them; `quit` stops the lab and removes its files)");
        let stdin = std::io::stdin();
        let mut number = 0;
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim();
            match words(line).ok().and_then(|w| w.first().cloned()).as_deref() {
                None => continue,
                Some("quit" | "exit") => break,
                Some("help") => {
                    println!("{COMMANDS}");
                    continue;
                }
                _ => {}
            }
            number += 1;
            match Step::parse(line, &names) {
                Ok(step) => {
                    if let Err(f) = self.step_numbered(number, line, &step) {
                        println!("{f}");
                    }
                }
                Err(e) => println!("{e}"),
            }
        }
    }
}
