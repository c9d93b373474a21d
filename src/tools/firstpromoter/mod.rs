//! `fp-relay firstpromoter subscribe|status|recover`: set up, watch and repair the v2 webhook
//! subscription through FirstPromoter's API, with the relay's own configuration (file,
//! `FP_RELAY_*` environment), so that what FirstPromoter sends is what the relay checks.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::firstpromoter::client::{ApiClient, ApiError};
use crate::tools::ToolError;

mod recover;
mod status;
mod subscribe;

pub use recover::{recover, Recovered};
pub use status::status;
pub use subscribe::{subscribe, subscription_timeout};

/// Header on a recovered record: which delivery record of FirstPromoter's it came from.
pub const RECOVERED_FROM: &str = "fp-recovered-from";

/// Most retries FirstPromoter makes of a delivery (its API's maximum).
const MAX_RETRIES: u64 = 10;

/// Seconds added to the relay's own deadline for FirstPromoter's `timeout`.
const TIMEOUT_MARGIN_SECS: u64 = 5;

/// What `subscribe`, `status` and `recover` share.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOptions {
    /// The relay's TOML configuration: [firstpromoter] API settings, [auth] credentials,
    /// [kafka] topics. FP_RELAY_* variables apply as for `serve`
    /// (FP_RELAY_FIRSTPROMOTER_API_KEY, FP_RELAY_FIRSTPROMOTER_ACCOUNT_ID).
    #[arg(long, short, env = "FP_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `fp-relay firstpromoter subscribe`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// The public https URL of the relay's webhook path, as FirstPromoter will call it
    /// [default: firstpromoter.webhook_url].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print the change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `fp-relay firstpromoter status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// How far back deliveries are counted.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
}

/// `fp-relay firstpromoter recover`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoverOptions {
    #[command(flatten)]
    pub api: ApiOptions,
    /// Kafka bootstrap servers (overrides the configuration).
    #[arg(long, value_name = "LIST")]
    pub brokers: Option<String>,
    /// Failed deliveries created within this long ago.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Ask FirstPromoter to send each failed delivery again (it goes through the relay like
    /// any webhook, and FirstPromoter's record turns `delivered`); where it refuses
    /// (max_retries spent: 422), publish the recorded payload instead.
    #[arg(long)]
    pub retry_delivery: bool,
    /// List the failed deliveries and what would be done; publish nothing, ask nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The configuration and API client every subcommand (`command`) starts from.
fn load(
    command: &str,
    options: &ApiOptions,
    brokers: Option<String>,
) -> Result<(Config, ApiClient), ToolError> {
    let config = super::relay_config(options.config.as_deref(), brokers)?;
    config.validate_firstpromoter_api(&format!("for `fp-relay firstpromoter {command}`"))?;
    let client =
        ApiClient::new(&config.firstpromoter, None).map_err(|e| ToolError::Usage(e.to_string()))?;
    Ok((config, client))
}

fn api_error(error: ApiError) -> ToolError {
    ToolError::Usage(error.to_string())
}
