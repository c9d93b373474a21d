//! The `fp-relay` binary: parses the command line and wires the library together.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fp_relay::cli::{CheckConfigArgs, Cli, Command, FirstPromoterCommand, ServeArgs, SpoolCommand};
use fp_relay::config::{Config, ConfigError, Overrides};
use fp_relay::tools::dev::DevBroker;
use fp_relay::tools::drain::{self, DrainOptions};
use fp_relay::tools::firstpromoter;
use fp_relay::tools::redrive::{self, RedriveOptions};
use fp_relay::tools::requeue::{self, RequeueOptions};
use fp_relay::tools::respond::{self, ResponderOptions};
use fp_relay::tools::send::{self, SendOptions};
use fp_relay::tools::tail::{self, TailOptions};
use fp_relay::tools::ToolError;
use fp_relay::webhook::auth::Authenticator;
use fp_relay::{shutdown_signal, telemetry, Server};

/// Exit status for an unusable configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => check_config(args),
        Command::Serve(args) => serve(args),
        Command::Respond(args) => respond(args),
        Command::Send(args) => send(args),
        Command::Tail(args) => tail(args),
        Command::Redrive(args) => redrive(args),
        Command::Spool(SpoolCommand::Drain(args)) => drain(args),
        Command::Spool(SpoolCommand::Requeue(args)) => requeue(args),
        Command::Spool(SpoolCommand::Status(args)) => finish(
            fp_relay::tools::spool_status::run(&args, &mut std::io::stdout()).map_err(Into::into),
        ),
        Command::Probe(args) => probe(&args),
        Command::FirstPromoter(command) => first_promoter(command),
    }
}

fn probe(options: &fp_relay::tools::probe::ProbeOptions) -> ExitCode {
    match fp_relay::tools::probe::run(options) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{}: {status}", options.admin);
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(args: CheckConfigArgs) -> ExitCode {
    if args.reference {
        print!("{}", fp_relay::config::reference::markdown());
        return ExitCode::SUCCESS;
    }
    let load = |insecure_no_auth| {
        let overrides = Overrides {
            insecure_no_auth,
            ..Overrides::default()
        };
        Config::load(args.config.as_deref(), std::env::vars(), &overrides)
    };
    let what = match &args.config {
        Some(path) => path.display().to_string(),
        None => "the defaults and the FP_RELAY_* environment (no --config)".to_owned(),
    };
    // The answer `serve` would give: a file without credentials is refused (secrets belong in
    // the environment, so say which variables), but whether the rest is valid is said too.
    match load(args.insecure_no_auth) {
        Ok(config) => {
            for deprecation in &config.deprecations {
                eprintln!("warning: {deprecation}");
            }
            println!("# {what}: valid. Effective configuration (secrets masked):");
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid { field, .. }) if field == "auth" => {
            let rest = match load(true) {
                Ok(_) => "everything else in it is valid".to_owned(),
                Err(error) => format!("and {error}"),
            };
            eprintln!(
                "error: auth: no credentials configured: `fp-relay serve` refuses {} as it is ({rest}). \
                 Set auth.path_tokens (v1), auth.tokens, auth.basic or auth.signature_secrets (v2), \
                 best from the environment, e.g. FP_RELAY_AUTH_PATH_TOKENS='[\"<token>\"]'; or check \
                 it with --insecure-no-auth for a relay behind something that checks credentials",
                what
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// An error and its causes on one line, each cause only when the text before does not already
/// say it (many errors embed their source's message, and `{:#}` would print it twice).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn send(options: SendOptions) -> ExitCode {
    let result = runtime()
        .and_then(|runtime| Ok(runtime.block_on(send::run(&options, &mut std::io::stdout()))?));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn first_promoter(command: FirstPromoterCommand) -> ExitCode {
    finish(runtime().and_then(|runtime| {
        let out = &mut std::io::stdout();
        Ok(runtime.block_on(async {
            match &command {
                FirstPromoterCommand::Subscribe(options) => {
                    firstpromoter::subscribe(options, out).await
                }
                FirstPromoterCommand::Status(options) => firstpromoter::status(options, out).await,
                FirstPromoterCommand::Recover(options) => {
                    let summary = firstpromoter::recover(options, out).await?;
                    if summary.incomplete() && !options.dry_run {
                        return Err(ToolError::Incomplete(format!(
                            "{} failed deliver{} left undone{} (listed above); fix the cause and run the same command again",
                            summary.undone(),
                            if summary.undone() == 1 { "y" } else { "ies" },
                            if summary.cut_short.is_empty() {
                                String::new()
                            } else {
                                format!(", and {} deliveries list(s) not read to the end: run again with a shorter --since", summary.cut_short.len())
                            }
                        )));
                    }
                    Ok(())
                }
            }
        })?)
    }))
}

fn drain(options: DrainOptions) -> ExitCode {
    finish(runtime().and_then(|runtime| {
        let drained = runtime.block_on(drain::run(&options));
        // A metadata call to a broker that does not answer may still be running on a blocking
        // thread; --timeout is over, so the process does not wait for it.
        runtime.shutdown_background();
        Ok(drained.map(|_| ())?)
    }))
}

fn requeue(options: RequeueOptions) -> ExitCode {
    finish(runtime().and_then(|runtime| {
        Ok(runtime
            .block_on(requeue::run(&options, &mut std::io::stdout()))
            .map(|_| ())?)
    }))
}

/// Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

fn redrive(options: RedriveOptions) -> ExitCode {
    let summary = match runtime()
        .and_then(|runtime| Ok(runtime.block_on(redrive::run(&options, &mut std::io::stdout()))?))
    {
        Ok(summary) => summary,
        Err(error) => return finish(Err(error)),
    };
    if summary.interrupted {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if summary.failed > 0 {
        eprintln!(
            "error: {} record(s) could not be put back (listed above); they are on the dead-letter topic again: fix their cause and run the same command again",
            summary.failed
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A tool's exit status: 0 when it did its work, 2 when the configuration is unusable (as
/// `serve` and `check-config` answer it), 1 for anything else, said on one line.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            match error.downcast_ref::<ToolError>() {
                Some(ToolError::Config(_)) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn tail(options: TailOptions) -> ExitCode {
    match tail::run(&options, &mut std::io::stdout().lock()) {
        // Piped into `head`, which has read enough.
        Err(ToolError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        result => finish(result.map(|_| ()).map_err(anyhow::Error::from)),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    telemetry::init(args.log_format);
    // A write past a file-size limit (RLIMIT_FSIZE) then fails with EFBIG, which the spool
    // answers with 503, instead of killing the process with SIGXFSZ.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists is sound.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Every connection, Kafka socket and spool segment is a descriptor; the usual soft limit
    // (1,024) is below http.max_connections' default, and the hard limit is there to be used.
    match fp_relay::http::descriptors::raise_soft_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the file descriptor limit")
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the file descriptor limit"),
    }
    let overrides = Overrides {
        insecure_no_auth: args.insecure_no_auth || args.dev,
        listen: args.listen,
        admin_listen: args.admin_listen,
        brokers: args.brokers.clone(),
    };
    let mut config = match Config::load(args.config.as_deref(), std::env::vars(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for deprecation in &config.deprecations {
        tracing::warn!("{deprecation}");
    }
    if args.dev {
        config.listen_locally_unless_chosen();
    }
    if config.auth.insecure_no_auth && Authenticator::new(&config.auth).is_open() {
        tracing::warn!(
            "AUTHENTICATION IS OFF: anyone who can reach {} can publish to Kafka. \
             Configure [auth] before exposing this listener.",
            config.http.listen
        );
    }
    // Declared before the runtime so it outlives every client that talks to it. The ports are
    // tried first: a second `serve --dev` must not print a broker address and then fail.
    if args.dev {
        for addr in [config.http.listen, config.admin.listen] {
            if let Err(error) = std::net::TcpListener::bind(addr) {
                eprintln!("error: cannot bind {addr}: {error} (is another fp-relay running? choose another with --listen / --admin-listen)");
                return ExitCode::FAILURE;
            }
        }
    }
    let dev = if args.dev {
        match DevBroker::start(&config) {
            Ok(dev) => {
                config.kafka.brokers = dev.bootstrap_servers();
                config.fulfilment.create_reply_topic = false;
                let brokers = &config.kafka.brokers;
                eprintln!(
                    "\n  fp-relay --dev: embedded Kafka-protocol broker at {brokers} (in memory)\n  \
                     webhooks: POST http://{}{}\n  \
                     watch what reaches Kafka:      fp-relay tail --brokers {brokers}\n  \
                     answer fulfilment requests:    fp-relay respond --brokers {brokers}\n",
                    config.http.listen, config.http.path
                );
                Some(dev)
            }
            Err(error) => {
                eprintln!("error: cannot start the embedded development broker: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let result = runtime().and_then(|runtime| {
        runtime.block_on(async {
            let server = Server::bind(config).await?;
            server.run(shutdown_signal()).await?;
            anyhow::Ok(())
        })
    });
    drop(dev);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

fn respond(options: ResponderOptions) -> ExitCode {
    telemetry::init(telemetry::LogFormat::Human);
    finish(
        runtime()
            .and_then(|runtime| Ok(runtime.block_on(respond::run(options, shutdown_signal()))?)),
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
