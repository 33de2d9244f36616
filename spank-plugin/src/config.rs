//! The plugin's arguments in plugstack.conf, e.g.
//! `required /usr/lib/ckpt/spank_ckpt.so ckpt_dir=/shared/ckpt/%u/%j interval=1h keep=2`.
//! Every argument is checked; an unknown or malformed one is an error naming it.

use crate::duration::parse_duration;
use std::time::Duration;

pub const KNOWN: &[&str] = &[
    "ckpt_dir",
    "interval",
    "keep",
    "default",
    "walltime_margin",
    "bin_dir",
    "log_level",
    "poll",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Template of the job's checkpoint directory (%u %U %j %x %h %%).
    pub ckpt_dir: String,
    /// Default periodic checkpoint interval (text as given, validated); None: no periodic.
    pub interval: Option<String>,
    pub keep: u32,
    /// Every job opted in unless it says --checkpoint-dmtcp=off.
    pub default_on: bool,
    /// Checkpoint (and requeue) this long before the time limit; zero: off.
    pub walltime_margin: Duration,
    pub walltime_margin_text: String,
    /// Where ckpt, ckpt-coordinatord, libckpt.so and ckpt-slurm are installed.
    pub bin_dir: String,
    /// error, warn, info, debug: the plugin's verbosity and CKPT_LOG of the job's processes.
    pub log_level: String,
    /// How often the job agent asks slurmctld whether the job is being preempted.
    pub poll: Duration,
    pub poll_text: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ckpt_dir: "%h/.ckpt/%j".into(),
            interval: None,
            keep: 3,
            default_on: false,
            walltime_margin: Duration::from_secs(300),
            walltime_margin_text: "5m".into(),
            bin_dir: "/usr/lib/ckpt".into(),
            log_level: "info".into(),
            poll: Duration::from_secs(10),
            poll_text: "10s".into(),
        }
    }
}

/// Values to expand a directory template with.
pub struct JobNames<'a> {
    pub user: &'a str,
    pub uid: u32,
    pub job_id: u32,
    pub job_name: &'a str,
    pub home: &'a str,
}

/// Expands `%u %U %j %x %h %%` (a job name's `/` become `_`).
pub fn expand(template: &str, n: &JobNames) -> Result<String, String> {
    let mut out = String::new();
    let mut it = template.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('u') => out.push_str(n.user),
            Some('U') => out.push_str(&n.uid.to_string()),
            Some('j') => out.push_str(&n.job_id.to_string()),
            Some('x') => out.push_str(&n.job_name.replace('/', "_")),
            Some('h') => out.push_str(n.home.trim_end_matches('/')),
            Some('%') => out.push('%'),
            Some(o) => return Err(format!("unknown escape %{o} (use %u user, %U uid, %j job id, %x job name, %h home, %% a percent sign)")),
            None => return Err("a lone % at the end (write %% for a percent sign)".into()),
        }
    }
    Ok(out)
}

/// Whether an `--checkpoint-dmtcp` argument means off.
pub fn is_off(v: &str) -> bool {
    matches!(v, "off" | "no" | "none" | "0")
}

/// Checks the argument of `--checkpoint-dmtcp[=INTERVAL]`: "" (on, site interval), off, or a
/// duration. Slurm passes "(null)" for a missing argument in nested sruns.
pub fn check_opt_value(v: Option<&str>) -> Result<Option<String>, String> {
    match v.map(str::trim) {
        None | Some("") | Some("(null)") => Ok(None),
        Some(x) if is_off(x) => Ok(Some("off".into())),
        Some(x) => match parse_duration(x) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(Some(x.to_string())),
            Ok(_) => Err(format!("--checkpoint-dmtcp={x}: the interval must be at least 1s")),
            Err(e) => Err(format!("--checkpoint-dmtcp={x}: {e}; or give no value (checkpoint on preemption, requeue and before the time limit only), or off")),
        },
    }
}

impl Config {
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut c = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                return Err(format!(
                    "plugstack.conf argument {a:?} is not KEY=VALUE (known keys: {})",
                    KNOWN.join(", ")
                ));
            };
            let Some(key) = KNOWN.iter().find(|x| **x == k) else {
                return Err(format!(
                    "unknown plugstack.conf argument {k:?} in {a:?} (known keys: {})",
                    KNOWN.join(", ")
                ));
            };
            if seen.contains(key) {
                return Err(format!("plugstack.conf argument {k} given twice ({a:?})"));
            }
            seen.push(key);
            let bad = |why: String| format!("plugstack.conf argument {a:?}: {why}");
            match *key {
                "ckpt_dir" => {
                    if !v.starts_with('/') && !v.starts_with("%h") {
                        return Err(bad(
                            "the directory template must be an absolute path (or start with %h)"
                                .into(),
                        ));
                    }
                    if !v.contains("%j") {
                        return Err(bad(
                            "the template must contain %j: one checkpoint directory per job".into(),
                        ));
                    }
                    for bad_prefix in ["/tmp/", "/dev/shm/", "/var/tmp/slurm"] {
                        if v.starts_with(bad_prefix) {
                            return Err(bad(format!("{bad_prefix} may be job-private or node-local (job_container/tmpfs) and is emptied; checkpoints must survive the job: use shared storage")));
                        }
                    }
                    let names = JobNames {
                        user: "u",
                        uid: 1,
                        job_id: 1,
                        job_name: "x",
                        home: "/h",
                    };
                    expand(v, &names).map_err(bad)?;
                    c.ckpt_dir = v.to_string();
                }
                "interval" => {
                    if is_off(v) {
                        c.interval = None;
                    } else {
                        let d = parse_duration(v).map_err(bad)?;
                        if d < Duration::from_secs(1) {
                            return Err(bad("the interval must be at least 1s (or off)".into()));
                        }
                        c.interval = Some(v.to_string());
                    }
                }
                "keep" => {
                    c.keep = match v.parse::<u32>() {
                        Ok(k) if (1..=1000).contains(&k) => k,
                        _ => return Err(bad("keep must be a whole number from 1 to 1000".into())),
                    }
                }
                "default" => {
                    c.default_on = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("default must be on or off".into())),
                    }
                }
                "walltime_margin" => {
                    c.walltime_margin = if is_off(v) {
                        Duration::ZERO
                    } else {
                        parse_duration(v).map_err(bad)?
                    };
                    c.walltime_margin_text = if is_off(v) { "0".into() } else { v.to_string() };
                }
                "bin_dir" => {
                    if !v.starts_with('/') {
                        return Err(bad("bin_dir must be an absolute path".into()));
                    }
                    c.bin_dir = v.trim_end_matches('/').to_string();
                    if c.bin_dir.is_empty() {
                        c.bin_dir = "/".into();
                    }
                }
                "log_level" => {
                    if !matches!(v, "error" | "warn" | "info" | "debug") {
                        return Err(bad("log_level must be error, warn, info or debug".into()));
                    }
                    c.log_level = v.to_string();
                }
                "poll" => {
                    let d = parse_duration(v).map_err(bad)?;
                    if d < Duration::from_secs(1) {
                        return Err(bad("poll must be at least 1s".into()));
                    }
                    c.poll = d;
                    c.poll_text = v.to_string();
                }
                _ => unreachable!(),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn p(a: &[&str]) -> Result<Config, String> {
        Config::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }
    #[test]
    fn defaults_and_values() {
        assert_eq!(p(&[]).unwrap(), Config::default());
        let c = p(&[
            "ckpt_dir=/shared/%u/%j-%x",
            "interval=1h",
            "keep=2",
            "default=on",
            "walltime_margin=2m",
            "bin_dir=/opt/ckpt/",
            "log_level=debug",
            "poll=5s",
        ])
        .unwrap();
        assert_eq!(c.ckpt_dir, "/shared/%u/%j-%x");
        assert_eq!(c.interval.as_deref(), Some("1h"));
        assert_eq!(
            (c.keep, c.default_on, c.walltime_margin.as_secs()),
            (2, true, 120)
        );
        assert_eq!(c.bin_dir, "/opt/ckpt");
        assert_eq!(c.poll.as_secs(), 5);
    }
    #[test]
    fn errors_name_the_argument() {
        assert!(p(&["colour=blue"])
            .unwrap_err()
            .contains("unknown plugstack.conf argument \"colour\""));
        assert!(p(&["keep=0"]).unwrap_err().contains("keep=0"));
        assert!(p(&["interval=soon"]).unwrap_err().contains("interval=soon"));
        assert!(p(&["ckpt_dir=/tmp/%j"]).unwrap_err().contains("survive"));
        assert!(p(&["ckpt_dir=/shared/%u"]).unwrap_err().contains("%j"));
        assert!(p(&["ckpt_dir=/shared/%q/%j"]).unwrap_err().contains("%q"));
        assert!(p(&["default=yes"]).unwrap_err().contains("default=yes"));
        assert!(p(&["keep=1", "keep=2"]).unwrap_err().contains("twice"));
        assert!(p(&["verbose"]).unwrap_err().contains("KEY=VALUE"));
    }
    #[test]
    fn expansion() {
        let n = JobNames {
            user: "ann",
            uid: 1001,
            job_id: 42,
            job_name: "a/b",
            home: "/home/ann/",
        };
        assert_eq!(expand("%h/.ckpt/%j", &n).unwrap(), "/home/ann/.ckpt/42");
        assert_eq!(
            expand("/s/%u/%U/%x/%j%%", &n).unwrap(),
            "/s/ann/1001/a_b/42%"
        );
    }
    #[test]
    fn option_values() {
        assert_eq!(check_opt_value(None).unwrap(), None);
        assert_eq!(check_opt_value(Some("(null)")).unwrap(), None);
        assert_eq!(
            check_opt_value(Some("30m")).unwrap().as_deref(),
            Some("30m")
        );
        assert_eq!(
            check_opt_value(Some("off")).unwrap().as_deref(),
            Some("off")
        );
        assert!(check_opt_value(Some("often"))
            .unwrap_err()
            .contains("--checkpoint-dmtcp=often"));
    }
}
