//! `mcp-harden`: development credentials for mcp-harden servers, and audit log verification.
//!
//! ```sh
//! export MCP_HARDEN_JWT_SECRET="$(mcp-harden secret)"
//! mcp-harden token --sub alice --scopes "db:read db:write" --ttl 15m --aud http://127.0.0.1:8080/mcp
//! mcp-harden api-key --sub ci-bot --scopes db:read --keys-file keys.json
//! mcp-harden audit verify audit.jsonl audit.jsonl.*
//! mcp-harden audit verify --from-genesis --head 1200:<hash> audit.jsonl audit.jsonl.*
//! mcp-harden audit verify --key-file /run/secrets/audit-key audit.jsonl audit.jsonl.*
//! ```
//!
//! The HMAC secret is read from the environment (`MCP_HARDEN_JWT_SECRET`) or a file, never
//! from the command line, where other users of the machine could see it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mcp_harden::auth::{random_secret, ApiKey, ApiKeyAuthenticator, ApiKeyEntry, DevToken};

#[derive(Parser, Debug)]
#[command(
    name = "mcp-harden",
    version,
    about = "Development credentials for mcp-harden servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint a short-lived HS256 token, printed on stdout.
    Token {
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Granted scopes, space- or comma-separated: "db:read db:write".
        #[arg(long, default_value = "")]
        scopes: String,
        /// Lifetime: 90s, 15m, 1h, 2d (at most 7d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The audience: the server's resource URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/mcp")]
        aud: String,
        /// The issuer (`iss`), if the server checks one.
        #[arg(long)]
        iss: Option<String>,
        /// A `tier` claim.
        #[arg(long)]
        tier: Option<String>,
        /// Read the secret from this file instead of $MCP_HARDEN_JWT_SECRET.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Create an API key: the key is printed once on stdout; only its hash is stored.
    ApiKey {
        /// The subject the key authenticates as.
        #[arg(long)]
        sub: String,
        /// Granted scopes, space- or comma-separated.
        #[arg(long, default_value = "")]
        scopes: String,
        /// A tier for the key's principal.
        #[arg(long)]
        tier: Option<String>,
        /// Add the stored entry to this JSON keys file (created with mode 0600 if missing);
        /// without it, the entry is printed on stderr.
        #[arg(long)]
        keys_file: Option<PathBuf>,
    },
    /// Print a random 256-bit secret for MCP_HARDEN_JWT_SECRET.
    Secret,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain of audit log files (active and rotated, in any order) and report
    /// the first edited, deleted, reordered or truncated record. Exit status 1 if broken.
    Verify {
        /// Fail unless the chain starts at the genesis (seq 1): no file removed from its start.
        #[arg(long)]
        from_genesis: bool,
        /// A head printed by an earlier verify (SEQ:HASH), kept elsewhere: fail unless that
        /// record is still there with that hash (the log was not cut after it, nor
        /// rewritten). Repeatable.
        #[arg(long = "head", value_name = "SEQ:HASH", value_parser = parse_head)]
        heads: Vec<(u64, String)>,
        /// The file holding the log's chain key (`FileAuditConfig::chain_key`; a trailing
        /// newline is not part of it): fail unless the records are linked with it.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// With --key-file, for a log written without a key before it was given one
        /// (`adopt_plain_log`): the seq of its first keyed record. Records without a MAC
        /// after it fail, and any without this.
        #[arg(long, value_name = "SEQ", requires = "key_file")]
        keyed_from: Option<u64>,
        /// The files, e.g. audit.jsonl audit.jsonl.*
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_head(s: &str) -> Result<(u64, String), String> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected SEQ:HASH"))?;
    let seq = seq
        .parse()
        .map_err(|_| format!("`{seq}`: not a sequence number"))?;
    // A plain log's head is a SHA-256, a keyed one's an HMAC-SHA256.
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hash}`: not a SHA-256 in hex"));
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 15m"))?;
    let secs = match unit {
        "s" => n,
        "m" | "" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the lifetime must be positive".into());
    }
    let ttl = Duration::from_secs(secs);
    if ttl > mcp_harden::auth::MAX_DEV_TOKEN_TTL {
        return Err("development tokens live at most 7d".into());
    }
    Ok(ttl)
}

fn scopes(s: &str) -> Vec<String> {
    s.split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn secret(file: Option<&Path>) -> Result<Vec<u8>, String> {
    let secret = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        None => std::env::var("MCP_HARDEN_JWT_SECRET").map_err(|_| {
            "set MCP_HARDEN_JWT_SECRET (the server's secret) or pass --secret-file".to_owned()
        })?,
    };
    Ok(secret.into_bytes())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Token {
            sub,
            scopes: s,
            ttl,
            aud,
            iss,
            tier,
            secret_file,
        } => {
            let secret = secret(secret_file.as_deref())?;
            let mut token = DevToken::new(sub, aud).scopes(scopes(&s)).ttl(ttl);
            if let Some(iss) = iss {
                token = token.issuer(iss);
            }
            if let Some(tier) = tier {
                token = token.tier(tier);
            }
            println!("{}", token.sign_hs256(&secret).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::ApiKey {
            sub,
            scopes: s,
            tier,
            keys_file,
        } => {
            let key = ApiKey::generate();
            let mut entry = key.entry(sub, scopes(&s));
            entry.tier = tier;
            match keys_file {
                Some(path) => add_entry(&path, entry)?,
                None => eprintln!(
                    "{}",
                    serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?
                ),
            }
            println!("{}", key.expose());
            Ok(())
        }
        Command::Secret => {
            println!("{}", random_secret());
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    from_genesis,
                    heads,
                    key_file,
                    keyed_from,
                    files,
                },
        } => {
            match mcp_harden::audit::file::verify_expecting(
                &files,
                &mcp_harden::audit::file::Expect {
                    from_genesis,
                    heads,
                    key: key_file
                        .as_deref()
                        .map(mcp_harden::audit::file::ChainKey::from_file)
                        .transpose()
                        .map_err(|e| e.to_string())?,
                    keyed_from,
                },
            ) {
                Ok(v) if v.records == 0 => {
                    println!("OK: no records");
                    Ok(())
                }
                Ok(v) => {
                    println!(
                        "OK: {} records, seq {}..{}, head {}:{}{}",
                        v.records,
                        v.first_seq,
                        v.last_seq,
                        v.last_seq,
                        v.head,
                        if v.from_genesis {
                            ""
                        } else {
                            " (the chain starts after the genesis: older files were removed)"
                        }
                    );
                    if let Some(seq) = v.keyed_from.filter(|s| *s > v.first_seq) {
                        println!("keyed from seq {seq}: the records before it were written without the key");
                    }
                    Ok(())
                }
                Err(b) => Err(format!("BROKEN: {b}")),
            }
        }
    }
}

fn add_entry(path: &Path, entry: ApiKeyEntry) -> Result<(), String> {
    let mut entries: Vec<ApiKeyEntry> = match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    entries.push(entry);
    // Refuse to write a file the server would refuse to load.
    ApiKeyAuthenticator::new(entries.clone()).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(json.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-harden: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("8d").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert_eq!(scopes("db:read, db:write"), ["db:read", "db:write"]);
    }

    #[test]
    fn heads() {
        let hash = "AB".repeat(32);
        assert_eq!(parse_head(&format!("42:{hash}")), Ok((42, "ab".repeat(32))));
        assert!(parse_head(&hash).is_err(), "no seq");
        assert!(parse_head(&format!("x:{hash}")).is_err());
        assert!(parse_head("42:abcd").is_err(), "not a SHA-256");
        assert!(parse_head(&format!("42:{}", "g".repeat(64))).is_err());
    }
}
